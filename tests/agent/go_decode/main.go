// go_decode: decode one agent API answer with Go's encoding/json into structs that mirror the
// types coder's Go client (codersdk/workspacesdk.AgentConn) decodes it into, so a Python test
// can ask "would a real Go client accept this body?".
//
// Standard library only (no module proxy here). The structs are written from the facts of the
// Go types (field types and json tags), named after them, and keep only what matters for
// decoding: a field of the wrong JSON type fails exactly as it fails in Go; unknown fields are
// ignored, as in Go (DisallowUnknownFields is not used by the client).
//
//	go_decode decode TYPE < body.json   exit 0 and the re-encoded value, or exit 1 and the error
//	go_decode zero TYPE                 the Go encoding of TYPE's zero value (nil slices -> null)
//	go_decode types                     the known TYPE names, one per line
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"time"
)

// UUID mirrors github.com/google/uuid.UUID's text form: 36-char canonical, also with urn:uuid:
// prefix, braces, or 32 bare hex digits (uuid.Parse). JSON: a string; anything else fails.
type UUID [16]byte

var uuidRe = regexp.MustCompile(`^(?:urn:uuid:)?\{?([0-9a-fA-F]{8})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{4})-?([0-9a-fA-F]{12})\}?$`)

func (u *UUID) UnmarshalText(b []byte) error {
	if len(b) == 0 { // google/uuid: an empty string is the nil UUID
		*u = UUID{}
		return nil
	}
	if !uuidRe.Match(b) {
		return fmt.Errorf("invalid UUID %q", b)
	}
	return nil
}

// OptBool mirrors tailscale.com/types/opt.Bool: a string type whose JSON form is the bare
// literal true, false or null; UnmarshalJSON rejects everything else (strings included).
type OptBool string

func (b *OptBool) UnmarshalJSON(j []byte) error {
	switch string(j) {
	case "true", "false":
		*b = OptBool(j)
	case "null":
		*b = ""
	default:
		return fmt.Errorf("invalid opt.Bool value %q", j)
	}
	return nil
}

func (b OptBool) MarshalJSON() ([]byte, error) {
	if b == "" {
		return []byte("null"), nil
	}
	return []byte(b), nil
}

// codersdk.Response / ValidationError
type ValidationError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

type Response struct {
	Message     string            `json:"message"`
	Detail      string            `json:"detail,omitempty"`
	Validations []ValidationError `json:"validations,omitempty"`
}

// workspacesdk files
type LSFile struct {
	Name               string `json:"name"`
	AbsolutePathString string `json:"absolute_path_string"`
	IsDir              bool   `json:"is_dir"`
}

type LSResponse struct {
	AbsolutePath       []string `json:"absolute_path"`
	AbsolutePathString string   `json:"absolute_path_string"`
	Contents           []LSFile `json:"contents"`
}

type ResolvePathResponse struct {
	ResolvedPath string `json:"resolved_path"`
}

type ReadFileLinesResponse struct {
	Success    bool   `json:"success"`
	FileSize   int64  `json:"file_size,omitempty"`
	TotalLines int    `json:"total_lines,omitempty"`
	LinesRead  int    `json:"lines_read,omitempty"`
	Content    string `json:"content,omitempty"`
	Error      string `json:"error,omitempty"`
}

type FileEditResult struct {
	Path string `json:"path"`
	Diff string `json:"diff"`
}

type FileEditResponse struct {
	Files []FileEditResult `json:"files,omitempty"`
}

type BundleFilesManifestEntry struct {
	Requested    string    `json:"requested"`
	Path         string    `json:"path"`
	ArchivePath  string    `json:"archive_path"`
	Size         int64     `json:"size"`
	ModTime      time.Time `json:"mod_time"`
	BytesWritten int64     `json:"bytes_written"`
	Truncated    bool      `json:"truncated"`
}

type BundleFilesManifestError struct {
	Requested string `json:"requested"`
	Path      string `json:"path,omitempty"`
	Reason    string `json:"reason"`
}

type BundleFilesLimits struct {
	MaxFiles        int   `json:"max_files"`
	MaxBytesPerFile int64 `json:"max_bytes_per_file"`
	MaxTotalBytes   int64 `json:"max_total_bytes"`
}

type BundleFilesManifest struct {
	Requested []string                   `json:"requested"`
	Files     []BundleFilesManifestEntry `json:"files"`
	Errors    []BundleFilesManifestError `json:"errors"`
	Truncated bool                       `json:"truncated"`
	Limits    BundleFilesLimits          `json:"limits"`
}

// workspacesdk processes
type StartProcessResponse struct {
	ID      string `json:"id"`
	Started bool   `json:"started"`
}

type ProcessInfo struct {
	ID         string `json:"id"`
	Command    string `json:"command"`
	WorkDir    string `json:"workdir,omitempty"`
	Background bool   `json:"background"`
	Running    bool   `json:"running"`
	ExitCode   *int   `json:"exit_code,omitempty"`
	StartedAt  int64  `json:"started_at_unix"`
	ExitedAt   *int64 `json:"exited_at_unix,omitempty"`
}

type ListProcessesResponse struct {
	Processes []ProcessInfo `json:"processes"`
}

type ProcessTruncation struct {
	OriginalBytes int    `json:"original_bytes"`
	RetainedBytes int    `json:"retained_bytes"`
	OmittedBytes  int    `json:"omitted_bytes"`
	Strategy      string `json:"strategy"`
}

type ProcessOutputResponse struct {
	Output    string             `json:"output"`
	Truncated *ProcessTruncation `json:"truncated,omitempty"`
	Running   bool               `json:"running"`
	ExitCode  *int               `json:"exit_code,omitempty"`
	Command   string             `json:"command,omitempty"`
}

// codersdk listening ports
type WorkspaceAgentListeningPort struct {
	ProcessName string `json:"process_name"`
	Network     string `json:"network"`
	Port        uint16 `json:"port"`
}

type WorkspaceAgentListeningPortsResponse struct {
	Ports []WorkspaceAgentListeningPort `json:"ports"`
}

// healthsdk.AgentNetcheckReport, health.Message, tailcfg.NetInfo
type HealthMessage struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type BaseReport struct {
	Error     *string         `json:"error"`
	Severity  string          `json:"severity"`
	Warnings  []HealthMessage `json:"warnings"`
	Dismissed bool            `json:"dismissed"`
}

type NetInfo struct {
	MappingVariesByDestIP OptBool
	HairPinning           OptBool
	WorkingIPv6           OptBool
	OSHasIPv6             OptBool
	WorkingUDP            OptBool
	WorkingICMPv4         OptBool
	HavePortMap           bool `json:",omitempty"`
	UPnP                  OptBool
	PMP                   OptBool
	PCP                   OptBool
	PreferredDERP         int
	LinkType              string
	DERPLatency           map[string]float64 `json:",omitempty"`
	FirewallMode          string             `json:",omitempty"`
}

type Interface struct {
	Name      string   `json:"name"`
	MTU       int      `json:"mtu"`
	Addresses []string `json:"addresses"`
}

type InterfacesReport struct {
	BaseReport
	Interfaces []Interface `json:"interfaces"`
}

type AgentNetcheckReport struct {
	BaseReport
	NetInfo    *NetInfo         `json:"net_info"`
	Interfaces InterfacesReport `json:"interfaces"`
}

// workspacesdk MCP and context config
type MCPToolInfo struct {
	ServerName    string         `json:"server_name"`
	Name          string         `json:"name"`
	Description   string         `json:"description"`
	Schema        map[string]any `json:"schema"`
	Required      []string       `json:"required"`
	UIResourceURI string         `json:"ui_resource_uri,omitempty"`
}

type ListMCPToolsResponse struct {
	Tools []MCPToolInfo `json:"tools"`
}

type ReadMCPResourceResponse struct {
	URI      string          `json:"uri"`
	MimeType string          `json:"mime_type,omitempty"`
	Text     string          `json:"text,omitempty"`
	Blob     string          `json:"blob,omitempty"`
	Meta     json.RawMessage `json:"meta,omitempty"`
}

type MCPToolContent struct {
	Type      string                   `json:"type"`
	Text      string                   `json:"text,omitempty"`
	Data      string                   `json:"data,omitempty"`
	MediaType string                   `json:"media_type,omitempty"`
	URI       string                   `json:"uri,omitempty"`
	Resource  *ReadMCPResourceResponse `json:"resource,omitempty"`
}

type CallMCPToolResponse struct {
	Content           []MCPToolContent `json:"content"`
	IsError           bool             `json:"is_error"`
	StructuredContent json.RawMessage  `json:"structured_content,omitempty"`
}

// codersdk.ChatMessagePart, as far as the agent's context parts use it. Data is []byte
// (base64 in JSON).
type ChatMessagePart struct {
	Type                     string `json:"type"`
	Text                     string `json:"text,omitempty"`
	URL                      string `json:"url,omitempty"`
	MediaType                string `json:"media_type,omitempty"`
	Data                     []byte `json:"data,omitempty"`
	FileName                 string `json:"file_name,omitempty"`
	StartLine                int    `json:"start_line,omitempty"`
	EndLine                  int    `json:"end_line,omitempty"`
	Content                  string `json:"content,omitempty"`
	ContextFilePath          string `json:"context_file_path,omitempty"`
	ContextFileContent       string `json:"context_file_content,omitempty"`
	ContextFileTruncated     bool   `json:"context_file_truncated,omitempty"`
	SkillName                string `json:"skill_name,omitempty"`
	SkillDescription         string `json:"skill_description,omitempty"`
	SkillDir                 string `json:"skill_dir,omitempty"`
	ContextFileSkillMetaFile string `json:"context_file_skill_meta_file,omitempty"`
}

type ContextConfigResponse struct {
	Parts []ChatMessagePart `json:"parts"`
}

// workspacesdk desktop
type DesktopActionResponse struct {
	Output           string `json:"output,omitempty"`
	ScreenshotData   string `json:"screenshot_data,omitempty"`
	ScreenshotWidth  int    `json:"screenshot_width,omitempty"`
	ScreenshotHeight int    `json:"screenshot_height,omitempty"`
}

// agentsdk.Manifest, the fields a support bundle reads back from /debug/manifest (the DERP map
// is a *tailcfg.DERPMap, null when not joined to a Coder deployment).
type Manifest struct {
	AgentID                  UUID              `json:"agent_id"`
	AgentName                string            `json:"agent_name"`
	OwnerName                string            `json:"owner_name"`
	WorkspaceID              UUID              `json:"workspace_id"`
	WorkspaceName            string            `json:"workspace_name"`
	GitAuthConfigs           int               `json:"git_auth_configs"`
	VSCodePortProxyURI       string            `json:"vscode_port_proxy_uri"`
	Apps                     []json.RawMessage `json:"apps"`
	DERPMap                  *json.RawMessage  `json:"derpmap"`
	DERPForceWebSockets      bool              `json:"derp_force_websockets"`
	EnvironmentVariables     map[string]string `json:"environment_variables"`
	Directory                string            `json:"directory"`
	MOTDFile                 string            `json:"motd_file"`
	DisableDirectConnections bool              `json:"disable_direct_connections"`
	Metadata                 []json.RawMessage `json:"metadata"`
	Scripts                  []json.RawMessage `json:"scripts"`
	Devcontainers            []json.RawMessage `json:"devcontainers"`
}

// codersdk git watch (agent-api.md §10): what the agent sends on /api/v0/git/watch, and the
// client's one message. Progress is the newest agents' streaming object.
type WorkspaceAgentRepoChanges struct {
	RepoRoot      string `json:"repo_root"`
	Branch        string `json:"branch"`
	RemoteOrigin  string `json:"remote_origin"`
	UnifiedDiff   string `json:"unified_diff"`
	Removed       bool   `json:"removed"`
	DiffTruncated bool   `json:"diff_truncated,omitempty"`
}

type WorkspaceAgentGitProgress struct {
	RepoRoot         string `json:"repo_root"`
	Branch           string `json:"branch,omitempty"`
	RemoteOrigin     string `json:"remote_origin,omitempty"`
	Reset            bool   `json:"reset,omitempty"`
	UnifiedDiffChunk string `json:"unified_diff_chunk,omitempty"`
	ProcessedFiles   int    `json:"processed_files,omitempty"`
	TotalFiles       int    `json:"total_files,omitempty"`
	Complete         bool   `json:"complete,omitempty"`
}

type WorkspaceAgentGitServerMessage struct {
	Type         string                      `json:"type"`
	Message      string                      `json:"message,omitempty"`
	ScannedAt    *time.Time                  `json:"scanned_at,omitempty"`
	Repositories []WorkspaceAgentRepoChanges `json:"repositories,omitempty"`
	Progress     *WorkspaceAgentGitProgress  `json:"progress,omitempty"`
}

type WorkspaceAgentGitClientMessage struct {
	Type string `json:"type"`
}

// Requests our client sends, as a Go agent decodes them (workspacesdk unless noted).
type StartProcessRequest struct {
	Command    string            `json:"command"`
	WorkDir    string            `json:"workdir,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Background bool              `json:"background,omitempty"`
}

type SignalProcessRequest struct {
	Signal string `json:"signal"`
}

type LSRequest struct {
	Path       []string `json:"path"`
	Relativity string   `json:"relativity"`
}

// FileEdit as the agent reads it: the new keys, the legacy ones (FileEdit.UnmarshalJSON
// decodes both through plain string fields).
type FileEdit struct {
	OldText    string `json:"old_text"`
	NewText    string `json:"new_text"`
	Search     string `json:"search"`
	Replace    string `json:"replace"`
	ReplaceAll bool   `json:"replace_all,omitempty"`
}

type FileEdits struct {
	Path  string     `json:"path"`
	Edits []FileEdit `json:"edits"`
}

type FileEditRequest struct {
	Files       []FileEdits `json:"files"`
	IncludeDiff bool        `json:"include_diff,omitempty"`
}

type CallMCPToolRequest struct {
	ToolName  string         `json:"tool_name"`
	Arguments map[string]any `json:"arguments"`
}

type ReadMCPResourceRequest struct {
	ServerName string `json:"server_name"`
	URI        string `json:"uri"`
}

type DesktopAction struct {
	Action          string  `json:"action"`
	Coordinate      *[2]int `json:"coordinate,omitempty"`
	StartCoordinate *[2]int `json:"start_coordinate,omitempty"`
	Text            *string `json:"text,omitempty"`
	Duration        *int    `json:"duration,omitempty"`
	ScrollAmount    *int    `json:"scroll_amount,omitempty"`
	ScrollDirection *string `json:"scroll_direction,omitempty"`
	ScaledWidth     *int    `json:"scaled_width,omitempty"`
	ScaledHeight    *int    `json:"scaled_height,omitempty"`
}

type StartDesktopRecordingRequest struct {
	RecordingID string `json:"recording_id"`
}

// AgentReconnectingPTYInit has no json tags: keys are the field names (matched
// case-insensitively by the decoder).
type AgentReconnectingPTYInit struct {
	ID            UUID
	Height        uint16
	Width         uint16
	Command       string
	Container     string
	ContainerUser string
	BackendType   string
}

type ReconnectingPTYRequest struct {
	Data   string `json:"data,omitempty"`
	Height uint16 `json:"height,omitempty"`
	Width  uint16 `json:"width,omitempty"`
}

// tailscale net/speedtest: the client's config (time.Duration is int64 nanoseconds, Direction
// an int) and the server's reply.
type SpeedtestConfig struct {
	Version      int           `json:"version"`
	TestDuration time.Duration `json:"time"`
	Direction    int           `json:"direction"`
}

type SpeedtestConfigResponse struct {
	Error string `json:"error,omitempty"`
}

var types = map[string]func() any{
	"SpeedtestConfig":                      func() any { return new(SpeedtestConfig) },
	"SpeedtestConfigResponse":              func() any { return new(SpeedtestConfigResponse) },
	"StartProcessRequest":                  func() any { return new(StartProcessRequest) },
	"SignalProcessRequest":                 func() any { return new(SignalProcessRequest) },
	"LSRequest":                            func() any { return new(LSRequest) },
	"FileEditRequest":                      func() any { return new(FileEditRequest) },
	"CallMCPToolRequest":                   func() any { return new(CallMCPToolRequest) },
	"ReadMCPResourceRequest":               func() any { return new(ReadMCPResourceRequest) },
	"DesktopAction":                        func() any { return new(DesktopAction) },
	"StartDesktopRecordingRequest":         func() any { return new(StartDesktopRecordingRequest) },
	"AgentReconnectingPTYInit":             func() any { return new(AgentReconnectingPTYInit) },
	"ReconnectingPTYRequest":               func() any { return new(ReconnectingPTYRequest) },
	"Response":                             func() any { return new(Response) },
	"LSResponse":                           func() any { return new(LSResponse) },
	"ResolvePathResponse":                  func() any { return new(ResolvePathResponse) },
	"ReadFileLinesResponse":                func() any { return new(ReadFileLinesResponse) },
	"FileEditResponse":                     func() any { return new(FileEditResponse) },
	"BundleFilesManifest":                  func() any { return new(BundleFilesManifest) },
	"StartProcessResponse":                 func() any { return new(StartProcessResponse) },
	"ListProcessesResponse":                func() any { return new(ListProcessesResponse) },
	"ProcessOutputResponse":                func() any { return new(ProcessOutputResponse) },
	"WorkspaceAgentListeningPortsResponse": func() any { return new(WorkspaceAgentListeningPortsResponse) },
	"AgentNetcheckReport":                  func() any { return new(AgentNetcheckReport) },
	"ListMCPToolsResponse":                 func() any { return new(ListMCPToolsResponse) },
	"CallMCPToolResponse":                  func() any { return new(CallMCPToolResponse) },
	"ReadMCPResourceResponse":              func() any { return new(ReadMCPResourceResponse) },
	"ContextConfigResponse":                func() any { return new(ContextConfigResponse) },
	"DesktopActionResponse":                func() any { return new(DesktopActionResponse) },
	"Manifest":                             func() any { return new(Manifest) },
	"WorkspaceAgentGitServerMessage":       func() any { return new(WorkspaceAgentGitServerMessage) },
	"WorkspaceAgentGitClientMessage":       func() any { return new(WorkspaceAgentGitClientMessage) },
}

func main() {
	if len(os.Args) == 2 && os.Args[1] == "types" {
		names := make([]string, 0, len(types))
		for n := range types {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Println(n)
		}
		return
	}
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go_decode decode|zero TYPE")
		os.Exit(2)
	}
	mk, ok := types[os.Args[2]]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown type %q\n", os.Args[2])
		os.Exit(2)
	}
	v := mk()
	switch os.Args[1] {
	case "decode":
		// As the client's decodeAgentJSON: json.NewDecoder(res.Body).Decode(v).
		if err := json.NewDecoder(os.Stdin).Decode(v); err != nil && err != io.EOF {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		} else if err == io.EOF {
			fmt.Fprintln(os.Stderr, "EOF")
			os.Exit(1)
		}
	case "zero":
	default:
		fmt.Fprintln(os.Stderr, "usage: go_decode decode|zero TYPE")
		os.Exit(2)
	}
	out, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}
