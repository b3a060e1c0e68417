// Package sparkplugpb holds the Go code generated from the official Sparkplug
// B protobuf schema (Eclipse Tahu's sparkplug_b.proto, EPL-2.0). The
// generated file is committed so a build needs neither protoc nor
// protoc-gen-go; regenerate it after changing the .proto with
//
//	go generate ./adapters/sparkplug/...
//
// which needs protoc (Debian package protobuf-compiler) and
// protoc-gen-go v1.36.12 on PATH
// (go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12).
package sparkplugpb

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative sparkplug_b.proto
