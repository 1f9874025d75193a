// Decodes container list responses (agent-api.md §9) the way the Go client does, strictly.
//
// The structs restate the JSON shape of codersdk's WorkspaceAgentListContainersResponse,
// WorkspaceAgentDevcontainer, WorkspaceAgentContainer and WorkspaceAgentContainerPort (field
// names, json tags and Go types: time.Time, uint16 ports, a UUID id). Reads one JSON document
// per line on stdin; prints "ok <devcontainers> <containers>" per line, or "error: ..." and
// exits 1. Unknown keys are errors too (DisallowUnknownFields): everything we send must be a
// field the Go types have.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"time"
)

type uuidText string

var uuidRe = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func (u *uuidText) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if !uuidRe.MatchString(s) {
		return fmt.Errorf("invalid UUID %q", s)
	}
	*u = uuidText(s)
	return nil
}

type containerPort struct {
	Port     uint16 `json:"port"`
	Network  string `json:"network"`
	HostIP   string `json:"host_ip,omitempty"`
	HostPort uint16 `json:"host_port,omitempty"`
}

type container struct {
	CreatedAt    time.Time         `json:"created_at"`
	ID           string            `json:"id"`
	FriendlyName string            `json:"name"`
	Image        string            `json:"image"`
	Labels       map[string]string `json:"labels"`
	Running      bool              `json:"running"`
	Ports        []containerPort   `json:"ports"`
	Status       string            `json:"status"`
	Volumes      map[string]string `json:"volumes"`
}

type devcontainerAgent struct {
	ID        uuidText `json:"id"`
	Name      string   `json:"name"`
	Directory string   `json:"directory"`
}

type devcontainer struct {
	ID              uuidText           `json:"id"`
	Name            string             `json:"name"`
	WorkspaceFolder string             `json:"workspace_folder"`
	ConfigPath      string             `json:"config_path,omitempty"`
	Status          string             `json:"status"`
	Dirty           bool               `json:"dirty"`
	Container       *container         `json:"container,omitempty"`
	Agent           *devcontainerAgent `json:"agent,omitempty"`
	Error           string             `json:"error,omitempty"`
}

type listResponse struct {
	Devcontainers []devcontainer `json:"devcontainers"`
	Containers    []container    `json:"containers"`
	Warnings      []string       `json:"warnings,omitempty"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	for in.Scan() {
		dec := json.NewDecoder(bytes.NewReader(in.Bytes()))
		dec.DisallowUnknownFields()
		var r listResponse
		if err := dec.Decode(&r); err != nil {
			fmt.Printf("error: %v\n", err)
			os.Exit(1)
		}
		for _, d := range r.Devcontainers {
			switch d.Status {
			case "running", "stopped", "starting", "stopping", "deleting", "error":
			default:
				fmt.Printf("error: status %q\n", d.Status)
				os.Exit(1)
			}
		}
		fmt.Printf("ok %d %d\n", len(r.Devcontainers), len(r.Containers))
	}
}
