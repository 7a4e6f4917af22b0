package main

// The fake upstream: `benchdriver fake --port N --fixtures FILE [--chunks N] [--gap-ms G]`.
//
// It answers the requests the benchmark makes with precomputed bytes that the orchestrator
// rendered with the Python fake's own functions (openai_grpc_server.fake_upstream.bodies), so
// the gateway parses exactly what it parses behind the Python fake: POST /v1/chat/completions
// (JSON, or SSE with one write per event, `gap_ms` apart, honouring stream_options.include_usage),
// POST /v1/embeddings (by input count, dimensions, encoding_format, model) and POST /v1/files
// (multipart, counted as it streams in). Headers as the Python fake: x-request-id req_<n>,
// openai-processing-ms, openai-version, and x-ratelimit-* with --ratelimit-headers.
// Control routes as the Python fake: GET/POST /_fake/config, GET /_fake/stats,
// GET /_fake/requests?route=...&limit=N (the last requests' JSON bodies), POST /_fake/reset.

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type streamFixture struct {
	Model        string   `json:"model"`
	Chunks       int      `json:"chunks"`
	IncludeUsage bool     `json:"include_usage"`
	Events       []string `json:"events"`
	Done         string   `json:"done"`
}

type embFixture struct {
	Model  string `json:"model"`
	Count  int    `json:"count"`
	Dims   int    `json:"dims"`
	Base64 bool   `json:"base64"`
	Body   string `json:"body"`
}

type fixtures struct {
	Chat       map[string]string `json:"chat"` // model -> body
	Streams    []streamFixture   `json:"streams"`
	Embeddings []embFixture      `json:"embeddings"`
}

type streamKey struct {
	model string
	n     int
	usage bool
}

type embKey struct {
	model  string
	count  int
	dims   int
	base64 bool
}

type fake struct {
	defModel  string // the model the fixtures were rendered for: others are substituted
	defEmb    string
	chat      map[string][]byte
	streams   map[streamKey][][]byte
	emb       map[embKey][]byte
	ratelimit bool

	mu      sync.Mutex
	chunks  int
	gapMs   float64
	records map[string][]json.RawMessage // route -> last bodies (bounded)

	seq          atomic.Int64
	ids          atomic.Int64
	requests     atomic.Int64
	started      atomic.Int64
	completed    atomic.Int64
	open         atomic.Int64
	disconnects  atomic.Int64
	cancelled    atomic.Int64
	connsOpen    atomic.Int64
	lastDiscNano atomic.Int64
}

const recordLimit = 64

func loadFixtures(path string) (*fake, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var fx fixtures
	if err := json.Unmarshal(raw, &fx); err != nil {
		return nil, err
	}
	f := &fake{chat: map[string][]byte{}, streams: map[streamKey][][]byte{}, emb: map[embKey][]byte{},
		records: map[string][]json.RawMessage{}}
	for m, b := range fx.Chat {
		f.chat[m] = []byte(b)
		f.defModel = m
	}
	for _, s := range fx.Streams {
		var evs [][]byte
		for _, e := range s.Events {
			evs = append(evs, []byte(e))
		}
		evs = append(evs, []byte(s.Done))
		f.streams[streamKey{s.Model, s.Chunks, s.IncludeUsage}] = evs
	}
	for _, e := range fx.Embeddings {
		f.emb[embKey{e.Model, e.Count, e.Dims, e.Base64}] = []byte(e.Body)
		f.defEmb = e.Model
	}
	return f, nil
}

// swapModel: the Python fake puts the request's model into the example body; for a model the
// fixtures were not rendered for, substitute it the same way (once, then cached).
func swapModel(b []byte, from, to string) []byte {
	return bytes.Replace(b, []byte(`"model":`+jsonString(from)), []byte(`"model":`+jsonString(to)), 1)
}

func (f *fake) chatBody(model string) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b, ok := f.chat[model]; ok {
		return b, true
	}
	b, ok := f.chat[f.defModel]
	if !ok {
		return nil, false
	}
	b = swapModel(b, f.defModel, model)
	f.chat[model] = b
	return b, true
}

func (f *fake) streamEvents(model string, n int, usage bool) ([][]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if evs, ok := f.streams[streamKey{model, n, usage}]; ok {
		return evs, true
	}
	evs, ok := f.streams[streamKey{f.defModel, n, usage}]
	if !ok {
		return nil, false
	}
	out := make([][]byte, len(evs))
	for i, e := range evs {
		out[i] = swapModel(e, f.defModel, model)
	}
	f.streams[streamKey{model, n, usage}] = out
	return out, true
}

func (f *fake) embBody(k embKey) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b, ok := f.emb[k]; ok {
		return b, true
	}
	b, ok := f.emb[embKey{f.defEmb, k.count, k.dims, k.base64}]
	if !ok {
		return nil, false
	}
	b = swapModel(b, f.defEmb, k.model)
	f.emb[k] = b
	return b, true
}

func jsonString(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimRight(b.String(), "\n")
}

func openaiError(msg string) []byte {
	return []byte(`{"error":{"message":` + jsonString(msg) + `,"type":"invalid_request_error","param":null,"code":null}}`)
}

func (f *fake) headers(w http.ResponseWriter, rid string, started time.Time, ctype string) {
	h := w.Header()
	h["Content-Type"] = []string{ctype}
	h["x-request-id"] = []string{rid}
	h["openai-processing-ms"] = []string{strconv.Itoa(int(time.Since(started).Milliseconds()))}
	h["openai-version"] = []string{"2020-10-01"}
	if f.ratelimit {
		h["x-ratelimit-limit-requests"] = []string{"10000"}
		h["x-ratelimit-limit-tokens"] = []string{"2000000"}
		h["x-ratelimit-remaining-requests"] = []string{"9999"}
		h["x-ratelimit-remaining-tokens"] = []string{"1999000"}
		h["x-ratelimit-reset-requests"] = []string{"6ms"}
		h["x-ratelimit-reset-tokens"] = []string{"30ms"}
	}
}

func (f *fake) record(route string, body []byte) {
	if len(body) == 0 || !json.Valid(body) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	list := append(f.records[route], json.RawMessage(append([]byte(nil), body...)))
	if len(list) > recordLimit {
		list = list[len(list)-recordLimit:]
	}
	f.records[route] = list
}

func (f *fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/_fake/") {
		f.control(w, r)
		return
	}
	started := time.Now()
	rid := "req_" + strconv.FormatInt(f.seq.Add(1), 10)
	f.requests.Add(1)
	route := r.Method + " " + strings.TrimPrefix(r.URL.Path, "/v1")
	switch route {
	case "POST /chat/completions":
		f.chatCompletions(w, r, rid, started)
	case "POST /embeddings":
		f.embeddings(w, r, rid, started)
	case "POST /files":
		f.files(w, r, rid, started)
	default:
		f.headers(w, rid, started, "application/json")
		w.WriteHeader(404)
		_, _ = w.Write(openaiError(fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path)))
	}
}

func (f *fake) fail(w http.ResponseWriter, rid string, started time.Time, status int, msg string) {
	if status >= 500 { // a request the fixtures do not cover: the log shows which
		fmt.Fprintln(os.Stderr, "benchdriver fake:", rid, msg)
	}
	f.headers(w, rid, started, "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(openaiError(msg))
}

func (f *fake) chatCompletions(w http.ResponseWriter, r *http.Request, rid string, started time.Time) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		f.cancelled.Add(1)
		return
	}
	f.record("POST /chat/completions", raw)
	var req struct {
		Model         *string `json:"model"`
		Stream        bool    `json:"stream"`
		StreamOptions *struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		f.fail(w, rid, started, 400, "We could not parse the JSON body of your request.")
		return
	}
	model := ""
	if req.Model != nil {
		model = *req.Model
	}
	if !req.Stream {
		body, ok := f.chatBody(model)
		if !ok {
			f.fail(w, rid, started, 500, "fake (Go): no precomputed chat body for model "+model)
			return
		}
		f.headers(w, rid, started, "application/json")
		w.Header()["Content-Length"] = []string{strconv.Itoa(len(body))}
		_, _ = w.Write(body)
		return
	}
	f.mu.Lock()
	n, gap := f.chunks, f.gapMs
	f.mu.Unlock()
	usage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
	events, ok := f.streamEvents(model, n, usage)
	if !ok {
		f.fail(w, rid, started, 500, fmt.Sprintf("fake (Go): no precomputed stream for %s, %d chunks, usage %v", model, n, usage))
		return
	}
	f.headers(w, rid, started, "text/event-stream; charset=utf-8")
	w.Header()["cache-control"] = []string{"no-cache"}
	f.started.Add(1)
	f.open.Add(1)
	defer f.open.Add(-1)
	w.WriteHeader(200)
	rc := http.NewResponseController(w)
	ctx := r.Context()
	var timer *time.Timer
	gapD := time.Duration(gap * float64(time.Millisecond))
	for i, ev := range events {
		if i > 0 && gapD > 0 {
			if timer == nil {
				timer = time.NewTimer(gapD)
			} else {
				timer.Reset(gapD)
			}
			select {
			case <-ctx.Done():
				timer.Stop()
				f.disconnect()
				return
			case <-timer.C:
			}
		}
		if _, err := w.Write(ev); err != nil {
			f.disconnect()
			return
		}
		if err := rc.Flush(); err != nil { // one write per event, as the Python fake does
			f.disconnect()
			return
		}
	}
	if ctx.Err() != nil {
		f.disconnect()
		return
	}
	f.completed.Add(1)
}

func (f *fake) disconnect() {
	f.disconnects.Add(1)
	f.lastDiscNano.Store(time.Now().UnixNano())
}

func (f *fake) embeddings(w http.ResponseWriter, r *http.Request, rid string, started time.Time) {
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		f.cancelled.Add(1)
		return
	}
	f.record("POST /embeddings", raw)
	var req struct {
		Model          *string         `json:"model"`
		Input          json.RawMessage `json:"input"`
		Dimensions     *int            `json:"dimensions"`
		EncodingFormat *string         `json:"encoding_format"`
	}
	if err := json.Unmarshal(raw, &req); err != nil {
		f.fail(w, rid, started, 400, "We could not parse the JSON body of your request.")
		return
	}
	count := 0
	var asString string
	var asList []json.RawMessage
	if json.Unmarshal(req.Input, &asString) == nil {
		count = 1
	} else if json.Unmarshal(req.Input, &asList) == nil && len(asList) > 0 {
		allInts := true
		for _, x := range asList {
			var i int64
			if json.Unmarshal(x, &i) != nil {
				allInts = false
				break
			}
		}
		count = len(asList)
		if allInts {
			count = 1
		}
	}
	dims := 1536
	if req.Dimensions != nil && *req.Dimensions > 0 && *req.Dimensions <= 8192 {
		dims = *req.Dimensions
	}
	model := "text-embedding-3-small"
	if req.Model != nil {
		model = *req.Model
	}
	b64 := req.EncodingFormat != nil && *req.EncodingFormat == "base64"
	body, ok := f.embBody(embKey{model, count, dims, b64})
	if !ok {
		f.fail(w, rid, started, 500, fmt.Sprintf("fake (Go): no precomputed embeddings for %s %dx%d base64=%v", model, count, dims, b64))
		return
	}
	f.headers(w, rid, started, "application/json")
	w.Header()["Content-Length"] = []string{strconv.Itoa(len(body))}
	_, _ = w.Write(body)
}

func (f *fake) files(w http.ResponseWriter, r *http.Request, rid string, started time.Time) {
	mr, err := r.MultipartReader()
	if err != nil {
		f.fail(w, rid, started, 400, "Malformed request body: "+err.Error())
		return
	}
	purpose, filename, size := "assistants", "file", int64(0)
	found := false
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			f.cancelled.Add(1)
			return
		}
		if part.FileName() != "" && !found {
			found = true
			filename = part.FileName()
			size, err = io.Copy(io.Discard, part)
		} else if part.FormName() == "purpose" {
			var b []byte
			b, err = io.ReadAll(io.LimitReader(part, 1<<20))
			purpose = string(b)
		} else {
			_, err = io.Copy(io.Discard, part)
		}
		if err != nil {
			f.cancelled.Add(1)
			return
		}
	}
	if !found {
		filename = "file"
	}
	id := fmt.Sprintf("file-fake%06d", f.ids.Add(1))
	body := fmt.Sprintf(`{"id":%s,"object":"file","bytes":%d,"created_at":1700000000,"expires_at":null,`+
		`"filename":%s,"purpose":%s,"status":"processed","status_details":null}`,
		jsonString(id), size, jsonString(filename), jsonString(purpose))
	f.headers(w, rid, started, "application/json")
	_, _ = w.Write([]byte(body))
}

func (f *fake) control(w http.ResponseWriter, r *http.Request) {
	route := r.Method + " " + r.URL.Path
	w.Header().Set("Content-Type", "application/json")
	var out any
	switch route {
	case "GET /_fake/stats":
		var last any
		if n := f.lastDiscNano.Load(); n != 0 {
			last = float64(n) / 1e9
		}
		out = map[string]any{
			"requests": f.requests.Load(), "streams_started": f.started.Load(),
			"streams_completed": f.completed.Load(), "open_streams": f.open.Load(),
			"disconnects": f.disconnects.Load(), "cancelled": f.cancelled.Load(),
			"last_disconnect_at": last, "open_connections": f.connsOpen.Load(),
			"pending_steps": map[string]int{},
		}
	case "GET /_fake/config", "POST /_fake/config":
		if r.Method == "POST" {
			var cfg map[string]any
			raw, _ := io.ReadAll(r.Body)
			if err := json.Unmarshal(raw, &cfg); err != nil {
				w.WriteHeader(400)
				_, _ = w.Write(openaiError("expected a JSON object of config fields"))
				return
			}
			f.mu.Lock()
			for k, v := range cfg {
				num, isNum := v.(float64)
				switch {
				case k == "chunks" && isNum:
					f.chunks = int(num)
				case k == "gap_ms" && isNum:
					f.gapMs = num
				case k == "ratelimit":
					b, _ := v.(bool)
					f.ratelimit = b
				default:
					f.mu.Unlock()
					w.WriteHeader(400)
					_, _ = w.Write(openaiError(fmt.Sprintf("unknown or unsupported config field %q (Go fake)", k)))
					return
				}
			}
			f.mu.Unlock()
		}
		f.mu.Lock()
		out = map[string]any{"chunks": f.chunks, "gap_ms": f.gapMs, "ratelimit": f.ratelimit, "record": true}
		f.mu.Unlock()
	case "GET /_fake/requests":
		q := r.URL.Query()
		f.mu.Lock()
		var keys []string
		if rt := q.Get("route"); rt != "" {
			keys = []string{rt}
		} else {
			for k := range f.records {
				keys = append(keys, k)
			}
		}
		var data []map[string]any
		for _, k := range keys {
			for _, b := range f.records[k] {
				data = append(data, map[string]any{"route": k, "json": b})
			}
		}
		f.mu.Unlock()
		if l := q.Get("limit"); l != "" {
			n, _ := strconv.Atoi(l)
			if n <= 0 {
				data = nil
			} else if len(data) > n {
				data = data[len(data)-n:]
			}
		}
		if data == nil {
			data = []map[string]any{}
		}
		out = map[string]any{"object": "list", "data": data}
	case "POST /_fake/reset":
		f.mu.Lock()
		f.records = map[string][]json.RawMessage{}
		f.mu.Unlock()
		for _, c := range []*atomic.Int64{&f.requests, &f.started, &f.completed, &f.disconnects, &f.cancelled, &f.seq, &f.ids} {
			c.Store(0)
		}
		out = map[string]any{"ok": true}
	default:
		w.WriteHeader(404)
		_, _ = w.Write(openaiError("Invalid URL (" + route + ")"))
		return
	}
	raw, _ := json.Marshal(out)
	_, _ = w.Write(raw)
}

func runFake(args []string) int {
	fs := flag.NewFlagSet("fake", flag.ExitOnError)
	host := fs.String("host", "127.0.0.1", "address to listen on")
	port := fs.Int("port", 0, "port (0: any free port)")
	fx := fs.String("fixtures", "", "JSON file of precomputed answers (bench/upstream_fixtures.py)")
	chunks := fs.Int("chunks", 8, "content chunks per SSE stream")
	gap := fs.Float64("gap-ms", 0, "pause between SSE events")
	rl := fs.Bool("ratelimit-headers", false, "send x-ratelimit-* headers")
	_ = fs.Parse(args)
	f, err := loadFixtures(*fx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchdriver fake: fixtures:", err)
		return 1
	}
	f.chunks, f.gapMs, f.ratelimit = *chunks, *gap, *rl
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchdriver fake:", err)
		return 1
	}
	srv := &http.Server{
		Handler: f,
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				f.connsOpen.Add(1)
			case http.StateClosed, http.StateHijacked:
				f.connsOpen.Add(-1)
			}
		},
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       10 * time.Minute,
	}
	fmt.Printf("http://%s/v1\n", ln.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "benchdriver fake:", err)
		return 1
	}
	return 0
}
