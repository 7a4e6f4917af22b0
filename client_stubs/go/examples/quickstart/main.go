// Quickstart: calls the openai-grpc gateway with the Go stubs — a unary call, a server stream,
// and a failure read as google.rpc details. Usage: go run ./examples/quickstart [host:port]
// (default localhost:50051, where `scripts/run.sh --demo` listens). Prints one JSON line.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	openaigrpcv1 "github.com/openai-grpc/openai-grpc/client_stubs/go/openai_grpc/v1"
)

type result struct {
	ID        string   `json:"id"`
	Content   string   `json:"content"`
	Frames    int      `json:"frames"`
	Streamed  string   `json:"streamed"`
	Code      string   `json:"code"`
	Reason    string   `json:"reason"`
	BadFields []string `json:"badFields"`
}

func main() {
	addr := "localhost:50051"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	if err := run(addr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(addr string) error {
	// The stubs' service config: per-method deadlines, retries of idempotent reads on UNAVAILABLE.
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(openaigrpcv1.ServiceConfig))
	if err != nil {
		return err
	}
	defer conn.Close()
	chat := openaigrpcv1.NewChatServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	hi := []*openaigrpcv1.ChatCompletionRequestMessage{{
		Role:    "user",
		Content: &openaigrpcv1.ChatCompletionRequestMessage_ContentText{ContentText: "hi"},
	}}
	var out result

	// Unary.
	reply, err := chat.CreateChatCompletion(ctx, &openaigrpcv1.CreateChatCompletionRequest{Model: "gpt-4o-mini", Messages: hi})
	if err != nil {
		return fmt.Errorf("CreateChatCompletion: %w", err)
	}
	out.ID = reply.GetChatCompletion().GetId()
	if choices := reply.GetChatCompletion().GetChoices(); len(choices) > 0 {
		out.Content = choices[0].GetMessage().GetContent()
	}

	// Server stream: each message carries the events one upstream read delivered.
	stream, err := chat.StreamChatCompletion(ctx, &openaigrpcv1.StreamChatCompletionRequest{Model: "gpt-4o-mini", Messages: hi})
	if err != nil {
		return fmt.Errorf("StreamChatCompletion: %w", err)
	}
	var text strings.Builder
	for {
		frame, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("StreamChatCompletion: %w", err)
		}
		out.Frames++
		for _, event := range frame.GetEvents() {
			for _, choice := range event.GetChoices() {
				text.WriteString(choice.GetDelta().GetContent())
			}
		}
	}
	out.Streamed = text.String()

	// A failure: one google.rpc.Status whose details say what went wrong and where.
	_, err = chat.CreateChatCompletion(ctx, &openaigrpcv1.CreateChatCompletionRequest{
		Model: "gpt-4o-mini", Messages: hi, Temperature: proto.Float64(3),
	})
	st, ok := status.FromError(err)
	if err == nil || !ok {
		return fmt.Errorf("expected a gRPC error, got %v", err)
	}
	out.Code = st.Code().String()
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			out.Reason = d.GetReason()
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out.BadFields = append(out.BadFields, v.GetField())
			}
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
