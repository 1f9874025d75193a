// yamux_peer: a hashicorp/yamux peer driven by its streams, for agentconn's interop tests.
//
//	yamux_peer server 127.0.0.1:0   listen, print "listening <addr>", serve one connection
//	yamux_peer client <addr>        dial <addr> and serve the session as yamux.Client
//
// Flags (before the mode): -keepalive <duration> (Go's KeepAliveInterval, default 30s).
// Each stream the other side opens starts with one command line:
//
//	echo            copy everything back, then half-close (FIN)
//	sink            read to EOF, answer "<sha256 hex>\n", close
//	source N        send N pattern bytes, close, read to EOF
//	wait            read until EOF or error, then open a new stream and send "report <what>\n"
//	ping            answer "ok\n" when a Ping round trip worked, else "err <msg>\n"
//	goaway          send GoAway(0) and answer "ok\n"
//	hold MS         stop accepting streams for MS milliseconds (to overflow the backlog)
//	open N          open a stream to the other side, send N pattern bytes, read N bytes back,
//	                FIN; answer "ok <sha256 of what came back>\n" or "err <msg>\n"
//	openwait        open a stream to the other side, send "x", read until EOF or error;
//	                answer "eof\n" or "err <msg>\n"
//	close           close the whole session
//
// The pattern is byte((i*i*7 + i*13) % 251) for i in [0, 65521), repeated.
// Exits when the session ends; prints "session closed: <reason>" on stderr.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

const period = 65521

var block = func() []byte {
	b := make([]byte, period)
	for i := range b {
		b[i] = byte((i*i*7 + i*13) % 251)
	}
	return b
}()

func pattern(n int) []byte {
	out := make([]byte, 0, n)
	for len(out) < n {
		m := n - len(out)
		if m > period {
			m = period
		}
		out = append(out, block[:m]...)
	}
	return out
}

type peer struct {
	sess *yamux.Session
	mu   sync.Mutex
	gate chan struct{} // closed = accepting
}

func readLine(r io.Reader) (string, error) {
	var sb strings.Builder
	buf := make([]byte, 1)
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			return sb.String(), err
		}
		if buf[0] == '\n' {
			return sb.String(), nil
		}
		sb.WriteByte(buf[0])
	}
}

func (p *peer) handle(s *yamux.Stream) {
	line, err := readLine(s)
	if err != nil {
		s.Close()
		return
	}
	fields := strings.Fields(line)
	if len(fields) == 0 {
		s.Close()
		return
	}
	arg := 0
	if len(fields) > 1 {
		arg, _ = strconv.Atoi(fields[1])
	}
	switch fields[0] {
	case "echo":
		io.Copy(s, s)
		s.Close()
	case "sink":
		h := sha256.New()
		io.Copy(h, s)
		fmt.Fprintf(s, "%s\n", hex.EncodeToString(h.Sum(nil)))
		s.Close()
	case "source":
		s.Write(pattern(arg))
		s.Close()
		io.Copy(ioutil.Discard, s)
	case "wait":
		_, err := io.Copy(ioutil.Discard, s)
		what := "eof"
		if err != nil {
			what = "err " + err.Error()
		}
		s.Close()
		r, oerr := p.sess.OpenStream()
		if oerr != nil {
			fmt.Fprintf(os.Stderr, "wait: open: %v\n", oerr)
			return
		}
		fmt.Fprintf(r, "report %s\n", what)
		r.Close()
	case "ping":
		if _, err := p.sess.Ping(); err != nil {
			fmt.Fprintf(s, "err %v\n", err)
		} else {
			fmt.Fprintf(s, "ok\n")
		}
		s.Close()
	case "goaway":
		p.sess.GoAway()
		fmt.Fprintf(s, "ok\n")
		s.Close()
	case "hold":
		gate := make(chan struct{})
		p.mu.Lock()
		p.gate = gate
		p.mu.Unlock()
		time.AfterFunc(time.Duration(arg)*time.Millisecond, func() { close(gate) })
		fmt.Fprintf(s, "ok\n")
		s.Close()
	case "open":
		o, err := p.sess.OpenStream()
		if err != nil {
			fmt.Fprintf(s, "err %v\n", err)
			s.Close()
			return
		}
		go o.Write(pattern(arg))
		// read the answer before closing: this yamux's Read returns EOF once we closed
		got := make([]byte, arg)
		if _, err := io.ReadFull(o, got); err != nil {
			fmt.Fprintf(s, "err %v\n", err)
		} else {
			sum := sha256.Sum256(got)
			fmt.Fprintf(s, "ok %s\n", hex.EncodeToString(sum[:]))
		}
		o.Close()
		s.Close()
	case "openwait":
		o, err := p.sess.OpenStream()
		if err != nil {
			fmt.Fprintf(s, "err %v\n", err)
			s.Close()
			return
		}
		o.Write([]byte("x"))
		if _, err := io.Copy(ioutil.Discard, o); err != nil {
			fmt.Fprintf(s, "err %v\n", err)
		} else {
			fmt.Fprintf(s, "eof\n")
		}
		s.Close()
	case "close":
		p.sess.Close()
	default:
		fmt.Fprintf(s, "err unknown command %q\n", fields[0])
		s.Close()
	}
}

func (p *peer) serve() {
	for {
		p.mu.Lock()
		gate := p.gate
		p.mu.Unlock()
		<-gate
		s, err := p.sess.AcceptStream()
		if err != nil {
			fmt.Fprintf(os.Stderr, "session closed: %v\n", err)
			return
		}
		go p.handle(s)
	}
}

func main() {
	keepalive := flag.Duration("keepalive", 30*time.Second, "yamux KeepAliveInterval")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: yamux_peer [-keepalive d] server|client ADDR")
		os.Exit(2)
	}
	cfg := yamux.DefaultConfig()
	cfg.KeepAliveInterval = *keepalive
	cfg.LogOutput = os.Stderr
	var conn net.Conn
	var sess *yamux.Session
	var err error
	switch flag.Arg(0) {
	case "server":
		ln, lerr := net.Listen("tcp", flag.Arg(1))
		if lerr != nil {
			fmt.Fprintln(os.Stderr, lerr)
			os.Exit(1)
		}
		fmt.Printf("listening %s\n", ln.Addr())
		os.Stdout.Sync()
		conn, err = ln.Accept()
		ln.Close()
		if err == nil {
			sess, err = yamux.Server(conn, cfg)
		}
	case "client":
		conn, err = net.Dial("tcp", flag.Arg(1))
		if err == nil {
			sess, err = yamux.Client(conn, cfg)
		}
	default:
		err = fmt.Errorf("unknown mode %q", flag.Arg(0))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gate := make(chan struct{})
	close(gate)
	p := &peer{sess: sess, gate: gate}
	p.serve()
}
