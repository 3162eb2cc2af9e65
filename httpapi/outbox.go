package httpapi

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natsgate/natsgate/bridge"
)

// outItem is one message waiting for a client, with what goes before its
// fields in a WebSocket frame (nil for streams); or, with msg nil, bytes
// already encoded for the client's transport (raw): a key-value entry, or
// a notice that must come after the items before it (notice true).
type outItem struct {
	prefix []byte
	msg    *bridge.Msg
	raw    []byte
	notice bool
	size   int
}

// rawItem is an item of bytes already encoded for the transport.
func rawItem(b []byte, notice bool) outItem {
	return outItem{raw: b, notice: notice, size: len(b) + itemOverhead}
}

// messages counts the items of a batch that are messages, not notices.
func messages(items []outItem) int {
	n := 0
	for _, it := range items {
		if !it.notice {
			n++
		}
	}
	return n
}

// itemOverhead is what an item costs beyond its message's bytes.
const itemOverhead = 64

func itemSize(m *bridge.Msg) int { return m.WireSize() + itemOverhead }

// maxKeptCap is the largest control-lane buffer kept between takes while
// a client is busy, so a burst's memory is returned once it has been
// written; an idle client keeps none.
const maxKeptCap = 256

// itemBuffers holds message-lane buffers between bursts. An outbox gives
// its buffers back when it goes idle (so an idle client holds none) or
// when one has grown past maxKeptCap, and the next burst, on any
// session, starts from a buffer already grown instead of growing a new
// one from 16 items: with 1,000 sessions getting each message, that
// growing was an eighth of the gateway's CPU.
var itemBuffers sync.Pool

// maxPooledCap bounds the buffers kept in itemBuffers (72 KiB each);
// larger ones, grown by a rare burst, go to the GC.
const maxPooledCap = 1024

func getItems() []outItem {
	if p, ok := itemBuffers.Get().(*[]outItem); ok {
		return *p
	}
	return make([]outItem, 0, 16)
}

// putItems recycles a buffer whose items have all been cleared.
func putItems(s []outItem) {
	if c := cap(s); c > 0 && c <= maxPooledCap {
		s = s[:0]
		itemBuffers.Put(&s)
	}
}

// appendItemLocked queues an item on the message lane.
func (o *outbox) appendItemLocked(it outItem) {
	if o.items == nil {
		o.items = getItems()
	}
	o.items = append(o.items, it)
	o.bytes += it.size
}

// outbox is a client's bounded outbound queue, in two lanes:
//
//   - messages from subscriptions, pushed by NATS callbacks that must never
//     block: past limit bytes they are dropped and counted, so a client that
//     cannot keep up costs at most limit bytes;
//   - messages from JetStream subscriptions, which are stored and so are
//     never dropped: their producer waits for room instead (pushPaced),
//     which paces the pull from the consumer to the client's reading;
//   - control frames (acknowledgements, replies, pongs) that must not be
//     lost: past limit bytes their producers wait (backpressure on the
//     client's own reads and requests).
//
// A writer takes everything queued at once. When the outbox goes from idle
// to non-empty it calls wake, which starts (or signals) the writer; the
// writer keeps taking until take reports the outbox empty.
type outbox struct {
	limit int
	drops prometheus.Counter
	waker interface{ wake() }

	mu          sync.Mutex
	ctrl        [][]byte
	ctrlBytes   int
	items       []outItem
	bytes       int
	dropped     int       // dropped since the writer last took
	behindSince time.Time // first drop of the current run of drops
	running     bool      // a writer has been woken and has not seen the outbox empty
	closed      bool
	space       chan struct{} // made when a producer must wait; closed when the writer takes
}

func newOutbox(limit int, drops prometheus.Counter, waker interface{ wake() }) *outbox {
	return &outbox{limit: limit, drops: drops, waker: waker}
}

// chanWaker wakes a writer that waits on a channel.
type chanWaker chan struct{}

func (c chanWaker) wake() {
	select {
	case c <- struct{}{}:
	default:
	}
}

// unlockWaking unlocks the outbox and, when no writer is running, marks
// one running and wakes it: the one way producers start the writer.
func (o *outbox) unlockWaking() {
	wake := !o.running && !o.closed
	o.running = o.running || wake
	o.mu.Unlock()
	if wake {
		o.waker.wake()
	}
}

// dropLocked counts n messages lost to this client.
func (o *outbox) dropLocked(n int) {
	o.dropped += n
	if o.behindSince.IsZero() {
		o.behindSince = time.Now()
	}
}

// push queues a subscription message, or drops it when the message lane is
// at its bound (a message larger than the whole bound still goes through
// an empty lane). A drop needs no wake-up: with messages queued, the
// writer is running.
func (o *outbox) push(prefix []byte, m *bridge.Msg) {
	size := itemSize(m)
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	if o.bytes+size > o.limit && len(o.items) > 0 {
		o.dropLocked(1)
		o.mu.Unlock()
		o.drops.Inc()
		return
	}
	o.appendItemLocked(outItem{prefix: prefix, msg: m, size: size})
	o.unlockWaking()
}

// Why pushPaced gave up.
var (
	errOutboxClosed = errors.New("outbox closed")
	errPushStopped  = errors.New("subscription stopped")
	// errStalled: the client took nothing from its queue for the slow
	// consumer grace.
	errStalled = errors.New("client stalled")
)

// pushPaced queues an item of a JetStream subscription, waiting while
// the message lane is at its bound until the writer takes (the client
// is reading), stop is closed, or the writer has taken nothing for grace
// (errStalled). waits counts the pushes that had to wait.
func (o *outbox) pushPaced(it outItem, grace time.Duration, stop <-chan struct{}, waits prometheus.Counter) error {
	var timer *time.Timer
	for {
		o.mu.Lock()
		if o.closed {
			o.mu.Unlock()
			return errOutboxClosed
		}
		if o.bytes+it.size <= o.limit || len(o.items) == 0 {
			o.appendItemLocked(it)
			o.unlockWaking()
			if timer != nil {
				timer.Stop()
			}
			return nil
		}
		if o.space == nil {
			o.space = make(chan struct{})
		}
		space := o.space
		o.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(grace)
			waits.Inc()
		}
		select {
		case <-space:
			// The writer took: the client is reading. The grace counts
			// from the last take.
			timer.Reset(grace)
		case <-stop:
			timer.Stop()
			return errPushStopped
		case <-timer.C:
			return errStalled
		}
	}
}

// noteDropped counts n messages lost before they reached the outbox (the
// NATS subscription's own buffer overflowed), for the same notice as
// drops here.
func (o *outbox) noteDropped(n int) {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.dropLocked(n)
	o.unlockWaking()
	o.drops.Add(float64(n))
}

// ctrlFitsLocked reports whether the control lane has room; an empty lane
// takes a frame of any size.
func (o *outbox) ctrlFitsLocked() bool { return o.ctrlBytes < o.limit || len(o.ctrl) == 0 }

// appendCtrlUnlock queues a control frame and unlocks.
func (o *outbox) appendCtrlUnlock(b []byte) {
	o.ctrl = append(o.ctrl, b)
	o.ctrlBytes += len(b)
	o.unlockWaking()
}

// pushCtrl queues a control frame, waiting while the control lane is over
// its bound, until the writer takes or the outbox closes.
func (o *outbox) pushCtrl(b []byte) {
	for {
		o.mu.Lock()
		if o.closed {
			o.mu.Unlock()
			return
		}
		if o.ctrlFitsLocked() {
			o.appendCtrlUnlock(b)
			return
		}
		if o.space == nil {
			o.space = make(chan struct{})
		}
		space := o.space
		o.mu.Unlock()
		<-space
	}
}

// tryCtrl queues a control frame unless the control lane is full; for
// notices from callbacks, which must not wait.
func (o *outbox) tryCtrl(b []byte) {
	o.mu.Lock()
	if o.closed || !o.ctrlFitsLocked() {
		o.mu.Unlock()
		return
	}
	o.appendCtrlUnlock(b)
}

// batch is what a writer takes in one go.
type batch struct {
	ctrl    [][]byte
	items   []outItem
	dropped int           // messages dropped since the previous take
	behind  time.Duration // how long drops have gone on, if they continued since the previous take
}

// take hands the writer everything queued in exchange for its previous,
// written batch. ok is false when there is nothing to write (or the
// outbox is closed): the writer stops, and the next push wakes it again.
func (o *outbox) take(prev batch) (b batch, ok bool) {
	clear(prev.ctrl)
	clear(prev.items)
	if cap(prev.items) > maxKeptCap {
		putItems(prev.items)
		prev.items = nil
	}
	if cap(prev.ctrl) > maxKeptCap {
		prev.ctrl = nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed || (len(o.ctrl) == 0 && len(o.items) == 0 && o.dropped == 0) {
		// Idle again: let go of the buffers, so a quiet client holds none.
		o.running = false
		putItems(prev.items)
		putItems(o.items)
		o.items, o.ctrl = nil, nil
		return batch{}, false
	}
	b.ctrl, o.ctrl, o.ctrlBytes = o.ctrl, prev.ctrl[:0], 0
	b.items, o.items, o.bytes = o.items, prev.items[:0], 0
	b.dropped, o.dropped = o.dropped, 0
	if !o.behindSince.IsZero() {
		if b.dropped == 0 {
			o.behindSince = time.Time{}
		} else {
			b.behind = time.Since(o.behindSince)
		}
	}
	if o.space != nil {
		close(o.space)
		o.space = nil
	}
	return b, true
}

// close discards what is queued and refuses what comes; waiting producers
// return.
func (o *outbox) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	o.closed = true
	o.ctrl, o.items = nil, nil
	if o.space != nil {
		close(o.space)
		o.space = nil
	}
}
