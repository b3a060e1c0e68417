package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	paho "github.com/eclipse/paho.mqtt.golang"
)

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not a log level; use debug, info, warn or error", s)
	}
	return l, nil
}

// newLogger builds the process logger from the validated log section.
func newLogger(w io.Writer, c LogConfig) *slog.Logger {
	level, err := parseLevel(c.Level)
	if err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// pahoLogger sends paho's package-level loggers to slog. paho offers no
// per-client logger, so this is set once, in main, for the whole process.
type pahoLogger struct {
	log   *slog.Logger
	level slog.Level
}

func (p pahoLogger) Println(v ...any) {
	p.log.Log(context.Background(), p.level, strings.TrimSpace(fmt.Sprintln(v...)), "component", "paho")
}

func (p pahoLogger) Printf(format string, v ...any) {
	p.log.Log(context.Background(), p.level, strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "paho")
}

// routePahoLogs sends paho's package-level loggers to logger. Its ERROR and
// WARN lines go to debug: they repeat, without the source's name, what the
// MQTT source already logs with context (connection lost, reconnecting),
// and some are noise on a clean shutdown. CRITICAL stays an error. The
// DEBUG logger stays silent: it logs every packet.
func routePahoLogs(logger *slog.Logger) {
	paho.CRITICAL = pahoLogger{logger, slog.LevelError}
	paho.ERROR = pahoLogger{logger, slog.LevelDebug}
	paho.WARN = pahoLogger{logger, slog.LevelDebug}
}
