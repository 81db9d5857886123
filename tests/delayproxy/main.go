// Command delayproxy is a TCP proxy for benchmarks that adds latency: every
// byte is forwarded RTT/2 after it arrived, in each direction, so a client
// sees the target as if it were RTT further away (this kernel has no netem).
// Bandwidth is not limited except by -window: at most that many bytes per
// connection and direction are in flight inside the proxy (like a TCP
// window), so one stream moves at most window/(RTT/2) bytes per second.
//
// It listens on 127.0.0.1 only and prints its address ("127.0.0.1:PORT")
// on stdout once it accepts connections.
//
//	delayproxy -target 127.0.0.1:9292 -rtt 20ms
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"sync"
	"time"
)

func main() {
	target := flag.String("target", "", "`HOST:PORT` to forward to")
	listen := flag.String("listen", "127.0.0.1:0", "127.0.0.1 `ADDR:PORT` to listen on")
	rtt := flag.Duration("rtt", 20*time.Millisecond, "round-trip time to add (half in each direction)")
	window := flag.Int("window", 64<<20, "bytes in flight per connection and direction at most")
	maxConns := flag.Int("max-conns", 256, "concurrent connections at most")
	flag.Parse()
	if *target == "" {
		log.Fatal("delayproxy: -target is required")
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || (host != "127.0.0.1" && host != "localhost") {
		log.Fatalf("delayproxy: -listen %q: only 127.0.0.1 is allowed", *listen)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ln.Addr().String())
	os.Stdout.Sync()
	slots := make(chan struct{}, *maxConns)
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		slots <- struct{}{}
		go func() {
			defer func() { <-slots }()
			serve(c, *target, *rtt/2, *window)
		}()
	}
}

// serve connects to target and pipes both directions with delay d.
func serve(c net.Conn, target string, d time.Duration, window int) {
	defer c.Close()
	time.Sleep(d) // the SYN's way there ...
	t, err := net.Dial("tcp", target)
	if err != nil {
		log.Printf("delayproxy: %v", err)
		return
	}
	defer t.Close()
	time.Sleep(d) // ... and the SYN-ACK's way back
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pipe(t, c, d, window) }()
	go func() { defer wg.Done(); pipe(c, t, d, window) }()
	wg.Wait()
}

// chunk is bytes read at one moment, due at the other end at due.
type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk written d after it was read, with at
// most window bytes held. It closes dst's write side at src's EOF.
func pipe(dst, src net.Conn, d time.Duration, window int) {
	q := make(chan chunk, 4096)
	credit := make(chan int, 1)
	credit <- window
	go func() {
		defer close(q)
		for {
			avail := <-credit // all the window there is; the rest goes back
			n := min(avail, 256<<10)
			b := make([]byte, n)
			m, err := src.Read(b)
			if m > 0 {
				q <- chunk{b[:m], time.Now().Add(d)}
			}
			// give back what was not used
			addCredit(credit, avail-m)
			if err != nil {
				return
			}
		}
	}()
	for ch := range q {
		time.Sleep(time.Until(ch.due))
		if _, err := dst.Write(ch.b); err != nil {
			src.Close()
			for range q {
				// drain, so that the reader goroutine ends
			}
			return
		}
		addCredit(credit, len(ch.b))
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		if err := tc.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) {
			log.Printf("delayproxy: %v", err)
		}
	}
}

// addCredit returns n bytes of window to the reader.
func addCredit(credit chan int, n int) {
	if n == 0 {
		return
	}
	for {
		select {
		case credit <- n:
			return
		case c := <-credit:
			n += c
		}
	}
}
