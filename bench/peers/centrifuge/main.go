// A minimal server on the Centrifuge library (Centrifugo's engine) as bench/compare runs it,
// built offline against Debian's golang-github-centrifugal-centrifuge-dev (0.15): no Centrifugo
// binary can be had from a registry reachable here, and Debian's library predates Centrifugo's
// own uni-directional transports, so this file supplies the two pieces Centrifugo would:
//
//	GET  /connection/websocket       the library's own WebSocket handler, JSON protocol
//	                                 (connect command, subscribe command, publications pushed)
//	GET  /connection/sse?channel=CH  a uni-directional EventSource transport written here on
//	                                 the library's Transport interface, the way Centrifugo's
//	                                 uni_sse works: the server connects the client and
//	                                 subscribes it server-side; each reply or push the
//	                                 library writes becomes one `data:` event
//	POST /api                        Centrifugo's server API shape,
//	                                 {"method":"publish","params":{"channel":CH,"data":…}}
//
// Every client is anonymous (an empty user id): the benchmark measures delivery, not auth.
// Everything else is the library's defaults (in-memory broker, no history, no presence).
//
//	go build (GOPATH mode, see bench/compare) && ./centrifuge-server 127.0.0.1:8070
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/centrifugal/centrifuge"
)

type channelKey struct{}

// sseTransport writes the library's JSON-streaming protocol as server-sent events. The
// library calls Write from one writer goroutine per client; the mutex also covers Close,
// which another goroutine may call.
type sseTransport struct {
	mu     sync.Mutex
	w      http.ResponseWriter
	flush  http.Flusher
	closed chan struct{}
	done   bool
}

func (t *sseTransport) Name() string                      { return "sse" }
func (t *sseTransport) Protocol() centrifuge.ProtocolType { return centrifuge.ProtocolTypeJSON }
func (t *sseTransport) Encoding() centrifuge.EncodingType { return centrifuge.EncodingTypeJSON }

func (t *sseTransport) Write(data []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.done {
		return io.EOF
	}
	// Several replies may come in one write, one JSON document a line: each line becomes a
	// `data:` line of the same event, which is how EventSource joins multi-line data.
	data = bytes.TrimRight(data, "\n")
	var buf bytes.Buffer
	buf.Grow(len(data) + 16)
	buf.WriteString("data: ")
	buf.Write(bytes.ReplaceAll(data, []byte("\n"), []byte("\ndata: ")))
	buf.WriteString("\n\n")
	if _, err := t.w.Write(buf.Bytes()); err != nil {
		return err
	}
	t.flush.Flush()
	return nil
}

func (t *sseTransport) Close(*centrifuge.Disconnect) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.done {
		t.done = true
		close(t.closed)
	}
	return nil
}

func sseHandler(node *centrifuge.Node) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		channel := r.URL.Query().Get("channel")
		flusher, ok := w.(http.Flusher)
		if channel == "" || !ok {
			http.Error(w, "channel required", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		t := &sseTransport{w: w, flush: flusher, closed: make(chan struct{})}
		ctx := context.WithValue(r.Context(), channelKey{}, channel)
		client, closeFn, err := centrifuge.NewClient(ctx, node, t)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer func() { _ = closeFn() }()
		// The connect command a bidirectional client would send; the subscription comes
		// from OnConnecting below.
		if !client.Handle([]byte(`{"id":1}`)) {
			return
		}
		select {
		case <-t.closed:
		case <-r.Context().Done():
		}
		// The handler must not return while the writer goroutine may still write.
		_ = t.Close(nil)
	}
}

type apiCommand struct {
	Method string `json:"method"`
	Params struct {
		Channel string          `json:"channel"`
		Data    json.RawMessage `json:"data"`
	} `json:"params"`
}

func apiHandler(node *centrifuge.Node) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var cmd apiCommand
		// A publish of the benchmark's sizes is well under 1 MiB.
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&cmd); err != nil ||
			cmd.Method != "publish" || cmd.Params.Channel == "" {
			http.Error(w, `{"error":{"code":107,"message":"bad request"}}`, http.StatusBadRequest)
			return
		}
		if _, err := node.Publish(cmd.Params.Channel, cmd.Params.Data); err != nil {
			http.Error(w, `{"error":{"code":100,"message":"internal"}}`, http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"result":{}}`))
	}
}

func main() {
	listen := "127.0.0.1:8070"
	if len(os.Args) > 1 {
		listen = os.Args[1]
	}
	node, err := centrifuge.New(centrifuge.DefaultConfig)
	if err != nil {
		log.Fatal(err)
	}
	node.OnConnecting(func(ctx context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		reply := centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{UserID: ""}}
		if channel, ok := ctx.Value(channelKey{}).(string); ok {
			reply.Subscriptions = map[string]centrifuge.SubscribeOptions{channel: {}}
		}
		return reply, nil
	})
	node.OnConnect(func(client *centrifuge.Client) {
		client.OnSubscribe(func(e centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			cb(centrifuge.SubscribeReply{}, nil)
		})
	})
	if err := node.Run(); err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/connection/websocket", centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{}))
	mux.Handle("/connection/sse", sseHandler(node))
	mux.Handle("/api", apiHandler(node))
	server := &http.Server{Addr: listen, Handler: mux}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		_ = node.Shutdown(context.Background())
		os.Exit(0)
	}()
	log.Printf("centrifuge %s listening on %s", "0.15", listen)
	log.Fatal(server.ListenAndServe())
}
