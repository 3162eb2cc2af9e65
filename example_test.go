package natsgate_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/natsgate/natsgate"
)

// The gateway mounted under /nats/ in a plain http.ServeMux, beside the
// application's own routes, with an embedded nats-server: a client
// subscribes over SSE and publishes over HTTP, both under the prefix.
func Example() {
	gw, err := natsgate.New(natsgate.Options{
		Tokens: []natsgate.Token{{Name: "app", Token: "s3cret"}},
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "the app") })
	mux.Handle("/nats/", http.StripPrefix("/nats", gw))
	srv := httptest.NewServer(mux) // your http.Server
	call := func(method, path, body string) *http.Response {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		return resp
	}

	stream := call("GET", "/nats/v1/subscribe/greetings", "")
	lines := bufio.NewScanner(stream.Body)
	lines.Scan() // ": subscribed", once the server has the subscription
	fmt.Println("subscribe:", stream.Status)

	resp := call("POST", "/nats/v1/publish/greetings", "hello")
	resp.Body.Close()
	fmt.Println("publish:", resp.Status)
	for lines.Scan() {
		if strings.HasPrefix(lines.Text(), "data: ") {
			fmt.Println(lines.Text())
			break
		}
	}

	// Shutting down: the gateway's streams end first, then the HTTP
	// server, then NATS.
	gw.Shutdown()
	stream.Body.Close()
	srv.Close()
	if err := gw.Close(context.Background()); err != nil {
		log.Fatal(err)
	}
	// Output:
	// subscribe: 200 OK
	// publish: 204 No Content
	// data: {"subject":"greetings","data":"hello"}
}

// The gateway in a chi router: Mount strips the prefix itself. Native
// NATS clients reach the same embedded server at NATSClientURL.
func Example_chi() {
	gw, err := natsgate.New(natsgate.Options{
		Tokens:     []natsgate.Token{{Name: "app", Token: "s3cret"}},
		NATSListen: "127.0.0.1:0",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer gw.Close(context.Background())
	r := chi.NewRouter()
	r.Mount("/nats", gw)
	srv := httptest.NewServer(r)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/nats/healthz")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("healthz:", resp.Status)
	resp, err = http.Post(srv.URL+"/nats/v1/publish/x", "text/plain", nil)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println("without a token:", resp.Status)
	fmt.Println("native clients:", strings.HasPrefix(gw.NATSClientURL(), "nats://127.0.0.1:"))
	// Output:
	// healthz: 200 OK
	// without a token: 401 Unauthorized
	// native clients: true
}
