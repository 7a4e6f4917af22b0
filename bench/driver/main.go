// Command benchdriver is the benchmark's driving side (bench/README.md): a load generator that
// speaks bench.run's protocol, and a fake upstream that writes precomputed bytes.
//
//	benchdriver load '<json spec>'
//	benchdriver fake --port N --fixtures FILE [--chunks N] [--gap-ms G] [--ratelimit-headers]
package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
)

func main() {
	// Both sides allocate little that lives long: collect less often, so the driving side spends
	// its CPU on requests, not on the collector.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchdriver load '<json spec>' | benchdriver fake [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "load":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: benchdriver load '<json spec>'")
			os.Exit(2)
		}
		// Pinned to one core, Go sizes itself to one P: the collector's worker then takes the
		// only P and gRPC stream readers wait behind it past 40 ms. The load generator gets two
		// Ps; the fake keeps one (with two, its timer-driven writes slipped: the direct cadence
		// ceiling fell from 256 streams to 32).
		if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < 2 {
			runtime.GOMAXPROCS(2)
		}
		// BENCHDRIVER_CPUPROFILE=FILE: a pprof CPU profile of the load generator itself.
		if path := os.Getenv("BENCHDRIVER_CPUPROFILE"); path != "" {
			if f, err := os.Create(path); err == nil {
				_ = pprof.StartCPUProfile(f)
				rc := runLoad(os.Args[2])
				pprof.StopCPUProfile()
				f.Close()
				os.Exit(rc)
			}
		}
		os.Exit(runLoad(os.Args[2]))
	case "fake":
		os.Exit(runFake(os.Args[2:]))
	default:
		fmt.Fprintf(os.Stderr, "benchdriver: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}
