package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// rowKV: GET and PUT /v1/kv/bench/{key} through the gateway ÷ nats.go
// KeyValue Get and Put on the gateway's embedded server, with as many
// workers on each side (each its own key), sharing one NATS connection
// as the gateway shares one per token.
func (b *bench) rowKV(ctx context.Context, r *row) error {
	o := b.o
	dir, err := os.MkdirTemp("", "gateway-bench-kv-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// A nats-server file with only a jetstream block: works whether or
	// not the embedded server runs JetStream by default.
	conf := filepath.Join(dir, "jetstream.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "jetstream { store_dir: %q }\n", filepath.Join(dir, "store")), 0o600); err != nil {
		return err
	}
	g, err := b.startGateway(ctx, "kv", "--nats-config", conf)
	if err != nil {
		return err
	}
	defer g.stop()
	nc, err := nats.Connect(g.natsURL, nats.Token(g.token), nats.Name("bench-kv"), nats.NoReconnect())
	if err != nil {
		return fmt.Errorf("nats connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench"})
	if err != nil {
		return fmt.Errorf("create bucket: %w", err)
	}
	value := payload(o.body)
	gc := httpClient(o.conns)
	var gwGet, natsGet, gwPut, natsPut []op
	for i := 0; i < o.conns; i++ {
		key := "k." + strconv.Itoa(i)
		if _, err := kv.Put(ctx, key, value); err != nil {
			return fmt.Errorf("seed %s: %w", key, err)
		}
		url := "http://" + g.addr + "/v1/kv/bench/" + key
		gwGet = append(gwGet, kvHTTPOp(gc, http.MethodGet, url, g.token, nil))
		gwPut = append(gwPut, kvHTTPOp(gc, http.MethodPut, url, g.token, value))
		natsGet = append(natsGet, func(ctx context.Context) (int, error) {
			_, err := kv.Get(ctx, key)
			return 1, err
		})
		natsPut = append(natsPut, func(ctx context.Context) (int, error) {
			_, err := kv.Put(ctx, key, value)
			return 1, err
		})
	}
	gets, err := sideBySide(ctx, o, side{srv: &g.proc, ops: gwGet}, side{srv: &g.proc, ops: natsGet})
	if err != nil {
		return err
	}
	puts, err := sideBySide(ctx, o, side{srv: &g.proc, ops: gwPut}, side{srv: &g.proc, ops: natsPut})
	if err != nil {
		return err
	}
	tgGet, tnGet, tgPut, tnPut := gets[0], gets[1], puts[0], puts[1]
	get, put := tgGet.opsPerSec()/tnGet.opsPerSec(), tgPut.opsPerSec()/tnPut.opsPerSec()
	r.gateway = "GET " + describe(tgGet, "req/s", tgGet.opsPerSec()) + "; PUT " + describe(tgPut, "req/s", tgPut.opsPerSec())
	r.baseline = "nats.go KeyValue Get: " + describe(tnGet, "ops/s", tnGet.opsPerSec()) + "; Put: " + describe(tnPut, "ops/s", tnPut.opsPerSec())
	r.goal = "— (informational; measured, kept in the table)"
	r.met = "—"
	if !r.refused(tgGet.errs, tnGet.errs, tgPut.errs, tnPut.errs) {
		r.result = fmt.Sprintf("get **%.2f×**, put **%.2f×**", get, put)
	}
	logf("kv: get gateway %.0f/s nats.go %.0f/s; put gateway %.0f/s nats.go %.0f/s", tgGet.opsPerSec(), tnGet.opsPerSec(), tgPut.opsPerSec(), tnPut.opsPerSec())
	return nil
}

// kvHTTPOp sends one key-value request and wants a 200.
func kvHTTPOp(client *http.Client, method, url, token string, body []byte) op {
	return func(ctx context.Context) (int, error) {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, url, rd)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("%s: status %d", method, resp.StatusCode)
		}
		return 1, nil
	}
}
