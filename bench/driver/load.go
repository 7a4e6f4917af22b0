package main

// The load generator: `benchdriver load '<json spec>'`, the same protocol and result fields as
// bench/loadgen.py (`@MARK name`, then one stdin line; `@RESULT <json>` at the end).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	pb "github.com/openai-grpc/openai-grpc/client_stubs/go/openai_grpc/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// The chat calls skip protobuf decoding on the client (the harness's cost is not the point):
// answers are scanned on the wire for the fields the checks need, requests are marshalled once.
const (
	chatUnaryMethod  = "/openai_grpc.v1.ChatService/CreateChatCompletion"
	chatStreamMethod = "/openai_grpc.v1.ChatService/StreamChatCompletion"
)

// wireMsg is a message as bytes: what is sent, or (received) the count of one field.
type wireMsg struct {
	out   []byte
	count func([]byte) int
	n     int
}

type wireCodec struct{}

func (wireCodec) Name() string { return "proto" }

func (wireCodec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(*wireMsg); ok {
		return m.out, nil
	}
	return proto.Marshal(v.(proto.Message))
}

func (wireCodec) Unmarshal(data []byte, v any) error {
	m := v.(*wireMsg)
	m.n = m.count(data)
	return nil
}

// countField: how many times top-level field `num` occurs in a serialized message (-1: malformed).
func countField(b []byte, num protowire.Number) int {
	n := 0
	for len(b) > 0 {
		f, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return -1
		}
		b = b[l:]
		if f == num {
			n++
		}
		l = protowire.ConsumeFieldValue(f, typ, b)
		if l < 0 {
			return -1
		}
		b = b[l:]
	}
	return n
}

// fieldBytes: the last occurrence of length-delimited top-level field `num`.
func fieldBytes(b []byte, num protowire.Number) []byte {
	var out []byte
	for len(b) > 0 {
		f, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil
		}
		b = b[l:]
		if f == num && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil
			}
			out = v
		}
		l = protowire.ConsumeFieldValue(f, typ, b)
		if l < 0 {
			return nil
		}
		b = b[l:]
	}
	return out
}

// StreamChatCompletionResponse.events = 1; CreateChatCompletionResponse.chat_completion = 1,
// ChatCompletion.choices = 2.
func countEvents(b []byte) int  { return countField(b, 1) }
func countChoices(b []byte) int { return countField(fieldBytes(b, 1), 2) }

// Spec is the JSON the orchestrator passes; fields the Go generator does not use are accepted.
type Spec struct {
	Transport      string  `json:"transport"`
	Target         string  `json:"target"`
	Mode           string  `json:"mode"`
	APIKey         string  `json:"api_key"`
	Model          string  `json:"model"`
	EmbedModel     string  `json:"embed_model"`
	EmbedInputs    int     `json:"embed_inputs"`
	EmbedDims      int     `json:"embed_dims"`
	Concurrency    int     `json:"concurrency"`
	Warmup         float64 `json:"warmup"`
	Duration       float64 `json:"duration"`
	Stagger        float64 `json:"stagger"`
	Count          int     `json:"count"`
	GapThresholdMs float64 `json:"gap_threshold_ms"`
	Timeout        float64 `json:"timeout"`
	Settle         float64 `json:"settle"`
	Seed           int64   `json:"seed"`
	// gRPC: calls spread round-robin over this many channels (connections); 1 = one channel,
	// as bench.loadgen. More let SO_REUSEPORT spread a --workers N gateway's load.
	Channels int `json:"channels"`
	// rate mode (open loop): offered rate stepped up geometrically until a step fails.
	RateStart     float64 `json:"rate_start"`
	RateFactor    float64 `json:"rate_factor"`
	RateMax       float64 `json:"rate_max"`
	RateStepS     float64 `json:"rate_step_s"`
	RateMaxSteps  int     `json:"rate_max_steps"`
	RateP99Ms     float64 `json:"rate_p99_ms"`
	RateMaxErrPct float64 `json:"rate_max_error_pct"`
	RateOp        string  `json:"rate_op"`
	MaxInflight   int     `json:"max_inflight"`
	// accepted for compatibility with bench/loadgen.py specs
	UploadBytes int `json:"upload_bytes"`
	ChunkBytes  int `json:"chunk_bytes"`
	Uploads     int `json:"uploads"`
}

func defaultSpec() Spec {
	return Spec{
		APIKey: "sk-bench-placeholder", Model: "gpt-4o-mini", EmbedModel: "text-embedding-3-small",
		EmbedInputs: 16, EmbedDims: 1536, Concurrency: 1, Warmup: 2, Duration: 8,
		GapThresholdMs: 40, Timeout: 120, Settle: 1, Seed: 1,
		RateFactor: 1.2, RateMax: 1e6, RateStepS: 4, RateMaxSteps: 40, RateP99Ms: 1000,
		RateMaxErrPct: 0.1, RateOp: "unary", MaxInflight: 20000, Channels: 1,
	}
}

var base = time.Now()

func now() float64 { return time.Since(base).Seconds() }

// -- recording ----------------------------------------------------------------------------

type recorder struct {
	start, end *atomicFloat
	thr        float64
	lat        []float64
	ttfc       []float64
	gaps       []float64
	gapsOver   int
	ok         int
	errs       int
	errsOut    int
	kinds      map[string]int
	events     int
	messages   int
	perStream  map[int]int
}

type atomicFloat struct{ v atomic.Uint64 }

func newAtomicFloat(x float64) *atomicFloat {
	a := &atomicFloat{}
	a.Set(x)
	return a
}
func (a *atomicFloat) Get() float64  { return math.Float64frombits(a.v.Load()) }
func (a *atomicFloat) Set(x float64) { a.v.Store(math.Float64bits(x)) }

func newRecorder(start, end *atomicFloat, thr float64) *recorder {
	return &recorder{start: start, end: end, thr: thr, kinds: map[string]int{}, perStream: map[int]int{}}
}

func errKind(err error) string {
	if st, ok := status.FromError(err); ok && st.Code() != 0 {
		d := st.Message()
		if len(d) > 160 {
			d = d[:160]
		}
		return fmt.Sprintf("%s: %s", strings.ToUpper(codeName(st.Code().String())), d)
	}
	s := err.Error()
	if len(s) > 160 {
		s = s[:160]
	}
	return fmt.Sprintf("%T: %s", err, s)
}

// codeName turns grpc-go's "DeadlineExceeded" into Python's "DEADLINE_EXCEEDED".
func codeName(s string) string {
	var b strings.Builder
	for i, r := range s {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (r *recorder) error(err error, inside bool) {
	if inside {
		r.errs++
	} else {
		r.errsOut++
	}
	r.kinds[errKind(err)]++
}

// onMessage is called for every stream message; prev < 0 means the first one.
func (r *recorder) onMessage(t0, prev, t float64, events int) {
	s, e := r.start.Get(), r.end.Get()
	if t < s || t > e {
		return
	}
	r.events += events
	r.messages++
	if prev < 0 {
		if t0 >= s {
			r.ttfc = append(r.ttfc, t-t0)
		}
	} else if prev >= s {
		g := t - prev
		r.gaps = append(r.gaps, g)
		if g > r.thr {
			r.gapsOver++
		}
	}
}

func (r *recorder) merge(o *recorder) {
	r.lat = append(r.lat, o.lat...)
	r.ttfc = append(r.ttfc, o.ttfc...)
	r.gaps = append(r.gaps, o.gaps...)
	r.gapsOver += o.gapsOver
	r.ok += o.ok
	r.errs += o.errs
	r.errsOut += o.errsOut
	for k, v := range o.kinds {
		r.kinds[k] += v
	}
	r.events += o.events
	r.messages += o.messages
	for k, v := range o.perStream {
		r.perStream[k] += v
	}
}

func round(x float64, d int) float64 {
	p := math.Pow(10, float64(d))
	return math.Round(x*p) / p
}

// summaryMs: count, mean and nearest-rank percentiles of durations in seconds, in ms.
func summaryMs(values []float64) map[string]any {
	n := len(values)
	if n == 0 {
		return map[string]any{"n": 0, "mean": nil, "p50": nil, "p90": nil, "p99": nil, "p999": nil, "max": nil}
	}
	s := append([]float64(nil), values...)
	sort.Float64s(s)
	q := func(p float64) float64 {
		i := int(math.Round(p*float64(n)+0.5)) - 1
		i = max(0, min(n-1, i))
		return round(s[i]*1000, 4)
	}
	sum := 0.0
	for _, v := range s {
		sum += v
	}
	return map[string]any{
		"n": n, "mean": round(sum/float64(n)*1000, 4), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99),
		"p999": q(0.999), "max": round(s[n-1]*1000, 4),
	}
}

func topKinds(m map[string]int, n int) map[string]int {
	type kv struct {
		k string
		v int
	}
	var items []kv
	for k, v := range m {
		items = append(items, kv{k, v})
	}
	sort.Slice(items, func(i, j int) bool { return items[i].v > items[j].v })
	out := map[string]int{}
	for i, it := range items {
		if i >= n {
			break
		}
		out[it.k] = it.v
	}
	return out
}

// -- the generator --------------------------------------------------------------------------

type gen struct {
	s       Spec
	stdin   *bufio.Reader
	conn    *grpc.ClientConn // the first channel; nil for HTTP
	conns   []*grpc.ClientConn
	embs    []pb.EmbeddingsServiceClient
	rr      atomic.Uint64
	chatReq *pb.CreateChatCompletionRequest
	strReq  *pb.StreamChatCompletionRequest
	chatRaw []byte // chatReq and strReq, marshalled once
	strRaw  []byte
	embReq  *pb.CreateEmbeddingRequest
	client  *http.Client
	chatURL string
	embURL  string
	chatB   []byte
	streamB []byte
	embB    []byte
	start   *atomicFloat
	end     *atomicFloat
}

func (g *gen) mark(name string) {
	fmt.Fprintf(os.Stdout, "@MARK %s\n", name)
	if _, err := g.stdin.ReadString('\n'); err != nil {
		// The orchestrator is gone: nobody reads the result, so do not keep loading the target.
		fmt.Fprintln(os.Stderr, "benchdriver load: stdin closed at mark", name)
		os.Exit(3)
	}
}

func (g *gen) setup() error {
	s := g.s
	texts := make([]string, 0, s.EmbedInputs)
	for i := 0; i < s.EmbedInputs; i++ {
		texts = append(texts, fmt.Sprintf("benchmark input %d: the quick brown fox jumps over the lazy dog", i))
	}
	if s.Transport == "grpc" {
		for i := 0; i < max(1, s.Channels); i++ {
			conn, err := grpc.NewClient(s.Target,
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.MaxCallSendMsgSize(256<<20)),
				grpc.WithInitialWindowSize(1<<24), grpc.WithInitialConnWindowSize(1<<26),
				// Each ClientConn has its own connection; the user agent tells them apart in logs.
				grpc.WithUserAgent(fmt.Sprintf("benchdriver/%d", i)),
			)
			if err != nil {
				return err
			}
			g.conns = append(g.conns, conn)
			g.embs = append(g.embs, pb.NewEmbeddingsServiceClient(conn))
		}
		g.conn = g.conns[0]
		msgs := []*pb.ChatCompletionRequestMessage{{Role: "user", Content: &pb.ChatCompletionRequestMessage_ContentText{ContentText: "hi"}}}
		g.chatReq = &pb.CreateChatCompletionRequest{Model: s.Model, Messages: msgs}
		g.strReq = &pb.StreamChatCompletionRequest{Model: s.Model, Messages: msgs}
		var err error
		if g.chatRaw, err = proto.Marshal(g.chatReq); err != nil {
			return err
		}
		if g.strRaw, err = proto.Marshal(g.strReq); err != nil {
			return err
		}
		dims := int64(s.EmbedDims)
		g.embReq = &pb.CreateEmbeddingRequest{
			Model: s.EmbedModel, Dimensions: &dims,
			Input: &pb.CreateEmbeddingRequest_Texts{Texts: &pb.StringList{Values: texts}},
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		for _, conn := range g.conns {
			conn.Connect()
			for st := conn.GetState(); st.String() != "READY"; st = conn.GetState() {
				if !conn.WaitForStateChange(ctx, st) {
					return fmt.Errorf("gRPC channel to %s not ready: %v", s.Target, st)
				}
			}
		}
		return nil
	}
	conns := max(s.Concurrency, s.Count) + 64
	maxConns := 0 // closed loop: one connection per worker, never more
	if s.Mode == "rate" {
		// Open loop: a fixed pool of `concurrency` connections, opened in the warm-up; requests
		// beyond it wait for a free connection (that wait counts in their latency) instead of
		// dialling storms of new connections.
		maxConns = max(1, s.Concurrency)
	}
	tr := &http.Transport{
		MaxConnsPerHost:     maxConns,
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	g.client = &http.Client{Transport: tr, Timeout: time.Duration(s.Timeout * float64(time.Second))}
	b := strings.TrimRight(s.Target, "/")
	g.chatURL, g.embURL = b+"/chat/completions", b+"/embeddings"
	msg := []map[string]string{{"role": "user", "content": "hi"}}
	g.chatB, _ = json.Marshal(map[string]any{"model": s.Model, "messages": msg})
	g.streamB, _ = json.Marshal(map[string]any{"model": s.Model, "messages": msg, "stream": true})
	g.embB, _ = json.Marshal(map[string]any{"model": s.EmbedModel, "input": texts, "dimensions": s.EmbedDims})
	return nil
}

// postJSON posts body and decodes the 200 answer into out.
func (g *gen) postJSON(ctx context.Context, url string, body []byte, out any) error {
	resp, err := g.post(ctx, url, body)
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	return json.Unmarshal(raw, out)
}

func (g *gen) post(ctx context.Context, url string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("authorization", "Bearer "+g.s.APIKey)
	req.Header.Set("content-type", "application/json")
	resp, err := g.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != 200 {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 160))
		resp.Body.Close()
		return nil, fmt.Errorf("HTTP %d: %q", resp.StatusCode, raw)
	}
	return resp, nil
}

// pick: the next channel, round-robin.
func (g *gen) pick() int { return int(g.rr.Add(1) % uint64(len(g.conns))) }

func (g *gen) timeout() time.Duration { return time.Duration(g.s.Timeout * float64(time.Second)) }

func (g *gen) unary(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	if g.conn != nil {
		resp := &wireMsg{count: countChoices}
		err := g.conns[g.pick()].Invoke(ctx, chatUnaryMethod, &wireMsg{out: g.chatRaw}, resp, grpc.ForceCodec(wireCodec{}))
		if err != nil {
			return 0, err
		}
		if resp.n != 1 {
			return 0, fmt.Errorf("expected 1 choice, got %d", resp.n)
		}
		return 1, nil
	}
	var body struct {
		Choices []json.RawMessage `json:"choices"`
	}
	if err := g.postJSON(ctx, g.chatURL, g.chatB, &body); err != nil {
		return 0, err
	}
	if len(body.Choices) != 1 {
		return 0, errors.New("expected 1 choice")
	}
	return 1, nil
}

func (g *gen) embed(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	var n, dims int
	if g.conn != nil {
		resp, err := g.embs[g.pick()].CreateEmbedding(ctx, g.embReq)
		if err != nil {
			return 0, err
		}
		data := resp.GetData()
		n = len(data)
		if n > 0 {
			dims = len(data[0].GetFloats().GetValues())
		}
	} else {
		var body struct {
			Data []struct {
				Embedding []json.RawMessage `json:"embedding"`
			} `json:"data"`
		}
		if err := g.postJSON(ctx, g.embURL, g.embB, &body); err != nil {
			return 0, err
		}
		n = len(body.Data)
		if n > 0 {
			dims = len(body.Data[0].Embedding)
		}
	}
	if n != g.s.EmbedInputs || dims != g.s.EmbedDims {
		return 0, fmt.Errorf("expected %dx%d embeddings, got %dx%d", g.s.EmbedInputs, g.s.EmbedDims, n, dims)
	}
	return n, nil
}

// streamCall reads one chat stream; onMsg gets each message's event count. It stops early
// (cancelling the stream) when onMsg returns false.
func (g *gen) streamCall(ctx context.Context, onMsg func(events int) bool) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout())
	defer cancel()
	total := 0
	if g.conn != nil {
		desc := &grpc.StreamDesc{ServerStreams: true}
		st, err := g.conns[g.pick()].NewStream(ctx, desc, chatStreamMethod, grpc.ForceCodec(wireCodec{}))
		if err != nil {
			return 0, err
		}
		if err := st.SendMsg(&wireMsg{out: g.strRaw}); err != nil {
			return 0, err
		}
		if err := st.CloseSend(); err != nil {
			return 0, err
		}
		msg := &wireMsg{count: countEvents}
		for {
			err := st.RecvMsg(msg)
			if err == io.EOF {
				return total, nil
			}
			if err != nil {
				return total, err
			}
			k := msg.n
			if k < 0 {
				return total, errors.New("malformed stream message")
			}
			total += k
			if !onMsg(k) {
				return total, nil // the deferred cancel ends the call
			}
		}
	}
	resp, err := g.post(ctx, g.chatURL, g.streamB)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close() // not drained: the transport drops the connection
	rd := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := rd.ReadSlice('\n')
		if len(line) > 0 && bytes.HasPrefix(line, []byte("data:")) && !bytes.HasPrefix(line, []byte("data: [DONE]")) {
			total++
			if !onMsg(1) {
				return total, nil
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil && err != bufio.ErrBufferFull {
			return total, err
		}
	}
}

type op func(ctx context.Context, rec *recorder, t0 float64) (int, error)

func (g *gen) opFor(mode string) op {
	switch mode {
	case "unary":
		return func(ctx context.Context, _ *recorder, _ float64) (int, error) { return g.unary(ctx) }
	case "embed":
		return func(ctx context.Context, _ *recorder, _ float64) (int, error) { return g.embed(ctx) }
	default:
		return func(ctx context.Context, rec *recorder, t0 float64) (int, error) {
			prev := -1.0
			return g.streamCall(ctx, func(k int) bool {
				t := now()
				rec.onMessage(t0, prev, t, k)
				prev = t
				return true
			})
		}
	}
}

func sleepCtx(ctx context.Context, secs float64) bool {
	if secs <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(time.Duration(secs * float64(time.Second)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (g *gen) timed(mode string) map[string]any {
	s := g.s
	f := g.opFor(mode)
	ctx, cancel := context.WithCancel(context.Background())
	rng := rand.New(rand.NewSource(s.Seed))
	recs := make([]*recorder, s.Concurrency)
	var wg sync.WaitGroup
	for i := 0; i < s.Concurrency; i++ {
		delay := 0.0
		if s.Stagger > 0 {
			delay = rng.Float64() * s.Stagger
		}
		rec := newRecorder(g.start, g.end, s.GapThresholdMs/1000)
		recs[i] = rec
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !sleepCtx(ctx, delay) {
				return
			}
			for ctx.Err() == nil {
				t0 := now()
				n, err := f(ctx, rec, t0)
				t1 := now()
				if ctx.Err() != nil {
					return
				}
				inside := t0 >= g.start.Get() && t1 <= g.end.Get()
				if err != nil {
					rec.error(err, inside)
					sleepCtx(ctx, 0.005) // never spin on a failing target
					continue
				}
				if inside {
					rec.ok++
					rec.lat = append(rec.lat, t1-t0)
					if mode == "stream" {
						rec.perStream[n]++
					}
				}
			}
		}()
	}
	time.Sleep(time.Duration(s.Warmup * float64(time.Second)))
	g.mark("START")
	st := now()
	g.start.Set(st)
	g.end.Set(st + s.Duration)
	time.Sleep(time.Until(base.Add(time.Duration((st + s.Duration) * float64(time.Second)))))
	g.mark("END")
	cancel()
	wg.Wait()
	rec := newRecorder(g.start, g.end, s.GapThresholdMs/1000)
	for _, r := range recs {
		rec.merge(r)
	}
	window := g.end.Get() - g.start.Get()
	out := map[string]any{
		"window_s": round(window, 4), "ok": rec.ok, "errors": rec.errs, "errors_outside_window": rec.errsOut,
		"error_kinds": topKinds(rec.kinds, 5), "rps": round(float64(rec.ok)/window, 2),
		"latency_ms": summaryMs(rec.lat),
	}
	if mode == "stream" {
		per := map[string]int{}
		for k, v := range topIntKinds(rec.perStream, 3) {
			per[fmt.Sprint(k)] = v
		}
		out["events"] = rec.events
		out["messages"] = rec.messages
		out["events_per_s"] = round(float64(rec.events)/window, 1)
		out["messages_per_s"] = round(float64(rec.messages)/window, 1)
		out["ttfc_ms"] = summaryMs(rec.ttfc)
		out["gap_ms"] = summaryMs(rec.gaps)
		out["gaps_over_threshold"] = rec.gapsOver
		out["gap_threshold_ms"] = s.GapThresholdMs
		out["events_per_stream"] = per
	}
	return out
}

func topIntKinds(m map[int]int, n int) map[int]int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	out := map[int]int{}
	for i, k := range keys {
		if i >= n {
			break
		}
		out[k] = m[k]
	}
	return out
}

// firstThenCancel opens a stream, reads its first message and cancels it.
func (g *gen) firstThenCancel(ctx context.Context) error {
	got := 0
	_, err := g.streamCall(ctx, func(k int) bool { got++; return false })
	if err != nil {
		return err
	}
	if got == 0 {
		return errors.New("stream ended before its first message")
	}
	return nil
}

func (g *gen) cancelMode() map[string]any {
	s := g.s
	rec := newRecorder(g.start, g.end, 1)
	ctx := context.Background()
	for i := 0; i < min(10, s.Count); i++ {
		if err := g.firstThenCancel(ctx); err != nil {
			rec.error(err, false)
		}
	}
	time.Sleep(time.Duration(s.Settle * float64(time.Second)))
	g.mark("START")
	var issued atomic.Int64
	var mu sync.Mutex
	var first []float64
	var wg sync.WaitGroup
	t0 := now()
	for w := 0; w < min(s.Concurrency, max(1, s.Count)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for issued.Add(1) <= int64(s.Count) {
				a := now()
				err := g.firstThenCancel(ctx)
				mu.Lock()
				if err != nil {
					rec.error(err, true)
				} else {
					first = append(first, now()-a)
					rec.ok++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := now() - t0
	g.mark("END")
	var perS any
	if elapsed > 0 {
		perS = round(float64(rec.ok)/elapsed, 1)
	}
	return map[string]any{
		"window_s": round(elapsed, 4), "cancelled": rec.ok, "errors": rec.errs,
		"errors_outside_window": rec.errsOut, "error_kinds": topKinds(rec.kinds, 5), "per_s": perS,
		"first_message_ms": summaryMs(first),
	}
}

func (g *gen) holdMode() map[string]any {
	s := g.s
	rec := newRecorder(g.start, g.end, 1)
	var mu sync.Mutex
	bg := context.Background()
	for i := 0; i < 30; i++ {
		if _, err := g.unary(bg); err != nil {
			rec.error(err, false)
		}
	}
	for i := 0; i < 8; i++ {
		if err := g.firstThenCancel(bg); err != nil {
			rec.error(err, false)
		}
	}
	time.Sleep(time.Duration(s.Settle * float64(time.Second)))
	g.mark("BASE")
	ctx, cancel := context.WithCancel(bg)
	var opened atomic.Int64
	allOpen := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	t0 := now()
	for i := 0; i < s.Count; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first := true
			_, err := g.streamCall(ctx, func(int) bool {
				if first {
					first = false
					if opened.Add(1) >= int64(s.Count) {
						once.Do(func() { close(allOpen) })
					}
				}
				return true
			})
			if err != nil && ctx.Err() == nil {
				mu.Lock()
				rec.error(err, true)
				mu.Unlock()
			}
		}()
	}
	select {
	case <-allOpen:
	case <-time.After(time.Duration(s.Timeout * float64(time.Second))):
	}
	openS := now() - t0
	time.Sleep(time.Duration(s.Settle * float64(time.Second)))
	g.mark("HELD")
	cancel()
	wg.Wait()
	time.Sleep(time.Duration(s.Settle * float64(time.Second)))
	g.mark("AFTER")
	mu.Lock()
	defer mu.Unlock()
	return map[string]any{
		"streams": s.Count, "opened": opened.Load(), "open_s": round(openS, 3), "errors": rec.errs,
		"error_kinds": topKinds(rec.kinds, 5),
	}
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// rateMode: open loop. Each step offers `rate` requests/s for rate_step_s seconds (request i is
// due at step start + i/rate; latency counts from when it was due, so queueing shows), then
// waits for every request of the step. A step passes when p99 < rate_p99_ms, errors <
// rate_max_error_pct % and the generator really offered >= 95 % of the rate. The rate grows by
// rate_factor until a step fails; the result is the last passing rate.
func (g *gen) rateMode() map[string]any {
	s := g.s
	f := g.opFor(s.RateOp)
	bg := context.Background()
	// Warm-up: `concurrency` closed-loop workers (this also opens the HTTP connection pool).
	var warmErrs atomic.Int64
	var wwg sync.WaitGroup
	wEnd := now() + s.Warmup
	for w := 0; w < max(1, s.Concurrency); w++ {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			rec := newRecorder(g.start, g.end, 1)
			for now() < wEnd {
				if _, err := f(bg, rec, now()); err != nil {
					warmErrs.Add(1)
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}
	wwg.Wait()
	g.mark("START")
	var steps []map[string]any
	best := 0.0
	var bestStep map[string]any
	rate := s.RateStart
	stopReason := fmt.Sprintf("no failing step within %d steps: the maximum is higher", s.RateMaxSteps)
	failed := false
	for i := 0; i < s.RateMaxSteps; i++ {
		if rate > s.RateMax {
			stopReason = fmt.Sprintf("rate_max %.0f reached: the maximum is higher", s.RateMax)
			break
		}
		step := g.rateStep(f, rate)
		steps = append(steps, step)
		if !step["pass"].(bool) {
			stopReason = fmt.Sprint(step["why"])
			failed = true
			break
		}
		best, bestStep = rate, step
		rate *= s.RateFactor
	}
	if best == 0 && failed {
		// Even the first step failed: halve the rate (up to 3 times) so the figure is not just 0.
		for r := s.RateStart / 2; r >= 1 && len(steps) < s.RateMaxSteps+3; r /= 2 {
			step := g.rateStep(f, r)
			steps = append(steps, step)
			if step["pass"].(bool) {
				best, bestStep = r, step
				break
			}
			if len(steps) >= 4 {
				break
			}
		}
		sort.Slice(steps, func(i, j int) bool { return steps[i]["rate"].(float64) < steps[j]["rate"].(float64) })
	}
	g.mark("END")
	return map[string]any{
		"max_rps": round(best, 1), "best_step": bestStep, "steps": steps, "stop": stopReason,
		"lower_bound": !failed,
		"rule": fmt.Sprintf("open loop, %.1f s per step, x%.2f per step; pass: p99 < %.0f ms, errors < %.2f %%, "+
			"latency not growing across the step (median of the last fifth <= 2 x the first fifth's + 25 ms), "+
			"offered >= 95 %% of the rate", s.RateStepS, s.RateFactor, s.RateP99Ms, s.RateMaxErrPct),
		"warmup_errors": warmErrs.Load(), "ok": 0, "errors": 0, "connections": max(1, s.Concurrency),
	}
}

func (g *gen) rateStep(f op, rate float64) map[string]any {
	s := g.s
	n := int(math.Max(1, math.Round(rate*s.RateStepS)))
	lat := make([]float64, 0, n)
	byDue := make([]float64, n) // latency by request index (due order); -1: failed or not sent
	for i := range byDue {
		byDue[i] = -1
	}
	kinds := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var inflight atomic.Int64
	errs, skipped := 0, 0
	cpu0 := cpuSeconds()
	t0 := now()
	interval := 1 / rate
	lateMax := 0.0
	for i := 0; i < n; i++ {
		due := t0 + float64(i)*interval
		if d := due - now(); d > 0 {
			time.Sleep(time.Duration(d * float64(time.Second)))
		} else if -d > lateMax {
			lateMax = -d
		}
		if inflight.Load() >= int64(s.MaxInflight) {
			skipped++
			continue
		}
		inflight.Add(1)
		wg.Add(1)
		go func(i int, due float64) {
			defer wg.Done()
			defer inflight.Add(-1)
			rec := newRecorder(g.start, g.end, 1)
			_, err := f(context.Background(), rec, due)
			t := now()
			mu.Lock()
			if err != nil {
				errs++
				kinds[errKind(err)]++
			} else {
				lat = append(lat, t-due)
				byDue[i] = t - due
			}
			mu.Unlock()
		}(i, due)
	}
	offeredS := now() - t0
	wg.Wait()
	wall := now() - t0
	cpu := cpuSeconds() - cpu0
	total := n
	errPct := float64(errs+skipped) / float64(total) * 100
	sum := summaryMs(lat)
	offered := float64(n-skipped) / math.Max(offeredS, interval)
	p99, _ := sum["p99"].(float64)
	// Sustained: a queue that grows across the step fails it even while p99 is still under the
	// limit (a short step at 10-20 % over capacity would otherwise pass).
	first, last := fifthMedian(byDue, false), fifthMedian(byDue, true)
	why := ""
	switch {
	case len(lat) == 0:
		why = "no request succeeded"
	case p99 >= s.RateP99Ms:
		why = fmt.Sprintf("p99 %.1f ms >= %.0f ms", p99, s.RateP99Ms)
	case last > 2*first+0.025:
		why = fmt.Sprintf("not sustained: latency grew across the step (median %.1f ms in the first fifth, "+
			"%.1f ms in the last)", first*1000, last*1000)
	case errPct >= s.RateMaxErrPct:
		why = fmt.Sprintf("errors %.3f %% >= %.2f %%", errPct, s.RateMaxErrPct)
	case offered < 0.95*rate:
		why = fmt.Sprintf("the generator offered only %.0f/s", offered)
	}
	return map[string]any{
		"rate": round(rate, 1), "requests": n, "ok": len(lat), "errors": errs, "skipped_inflight_cap": skipped,
		"error_pct": round(errPct, 4), "error_kinds": topKinds(kinds, 3), "offered_rps": round(offered, 1),
		"completed_rps": round(float64(len(lat))/wall, 1), "latency_ms": sum, "wall_s": round(wall, 3),
		"sender_late_max_ms": round(lateMax*1000, 3), "loadgen_cpu_pct": round(cpu/wall*100, 1),
		"first_fifth_p50_ms": round(first*1000, 3), "last_fifth_p50_ms": round(last*1000, 3),
		"pass": why == "", "why": why,
	}
}

// fifthMedian: the median latency of the first (or last) fifth of a step's requests, in due
// order, over those that succeeded.
func fifthMedian(byDue []float64, lastFifth bool) float64 {
	k := max(1, len(byDue)/5)
	part := byDue[:k]
	if lastFifth {
		part = byDue[len(byDue)-k:]
	}
	var ok []float64
	for _, v := range part {
		if v >= 0 {
			ok = append(ok, v)
		}
	}
	if len(ok) == 0 {
		return 0
	}
	sort.Float64s(ok)
	return ok[len(ok)/2]
}

func runLoad(arg string) int {
	s := defaultSpec()
	dec := json.NewDecoder(strings.NewReader(arg))
	if err := dec.Decode(&s); err != nil {
		fmt.Fprintln(os.Stderr, "benchdriver load: bad spec:", err)
		return 2
	}
	g := &gen{s: s, stdin: bufio.NewReader(os.Stdin), start: newAtomicFloat(math.Inf(1)), end: newAtomicFloat(math.Inf(1))}
	if err := g.setup(); err != nil {
		fmt.Fprintln(os.Stderr, "benchdriver load: setup:", err)
		return 1
	}
	var res map[string]any
	switch s.Mode {
	case "unary", "embed", "stream":
		res = g.timed(s.Mode)
	case "cancel":
		res = g.cancelMode()
	case "hold":
		res = g.holdMode()
	case "rate":
		res = g.rateMode()
	default:
		fmt.Fprintf(os.Stderr, "benchdriver load: mode %q is not implemented in Go (use bench.loadgen)\n", s.Mode)
		return 2
	}
	for _, c := range g.conns {
		c.Close()
	}
	res["loop"] = "go"
	res["pid"] = os.Getpid()
	res["loadgen_cpu_s"] = round(cpuSeconds(), 3)
	raw, _ := json.Marshal(res)
	fmt.Fprintf(os.Stdout, "@RESULT %s\n", raw)
	return 0
}
