package scheduler

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves the scheduler's read-only HTTP endpoints:
//
//	/        the status page (HTML, refreshing itself, no external assets)
//	/status  the same as JSON
//	/metrics Prometheus metrics
//	/livez   200 while the process runs
//	/readyz  200 once the fleet's state was read from the store, 503
//	         while it cannot be, or while stopping
//
// It changes nothing: there is no endpoint that starts, stops or edits.
func (s *Scheduler) Handler(m *Metrics) http.Handler {
	mux := http.NewServeMux()
	if m != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry(), promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n")) //nolint:errcheck
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		_, at, err := s.Status()
		switch {
		case s.isStopping():
			http.Error(w, "stopping", http.StatusServiceUnavailable)
		case err != nil:
			http.Error(w, "store not readable", http.StatusServiceUnavailable)
		case at.IsZero():
			http.Error(w, "fleet state not read yet", http.StatusServiceUnavailable)
		default:
			w.Write([]byte("ok\n")) //nolint:errcheck
		}
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st, at, _ := s.Status()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(struct { //nolint:errcheck
			ReadAt   time.Time       `json:"read_at"`
			Clusters []ClusterStatus `json:"clusters"`
		}{at, st})
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		st, at, err := s.Status()
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
		page := StatusPage{Clusters: st, ReadAt: at, Now: time.Now()}
		if err != nil {
			page.Error = "the store could not be read: the table may be stale"
		}
		if err := statusTemplate.Execute(w, page); err != nil {
			s.cfg.Log.Warn("status page not written", "err", err)
		}
	})
	return mux
}

// StatusPage is what the status page shows.
type StatusPage struct {
	Clusters []ClusterStatus
	ReadAt   time.Time
	Now      time.Time
	Error    string
}

// Age formats a duration for people: "42s", "3m", "2h05m", "4d".
func Age(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	}
}

var statusTemplate = template.Must(template.New("status").Funcs(template.FuncMap{
	"since": func(now time.Time, t *time.Time) string {
		if t == nil {
			return "never"
		}
		return Age(now.Sub(*t)) + " ago"
	},
	"until": func(now time.Time, t *time.Time) string {
		if t == nil {
			return "—"
		}
		return "in " + Age(t.Sub(now))
	},
	"secs": func(s float64) string { return Age(time.Duration(s * float64(time.Second))) },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="15">
<title>hsmbackup scheduler</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.4em;border-bottom:1px solid #ddd;vertical-align:top}
.green{border-left:.6em solid #2a2}.amber{border-left:.6em solid #e90}.red{border-left:.6em solid #d22;background:#fee}
.why{color:#a00;font-size:90%}.note{color:#666}
@media (max-width:700px){thead{display:none}tr{display:block;margin-bottom:.8em}td{display:block;border:0;padding:.1em .4em}td[data-h]::before{content:attr(data-h) ": ";color:#666}}
</style></head><body>
<h1>hsmbackup scheduler</h1>
<p class="note">{{if .ReadAt.IsZero}}The fleet's state has not been read from the store yet.{{else}}Fleet state read from the store at {{.ReadAt.UTC.Format "2006-01-02 15:04:05Z"}}.{{end}} This page refreshes itself.</p>
{{if .Error}}<p class="why">{{.Error}}</p>{{end}}
<table><thead><tr><th>Cluster</th><th>State</th><th>Newest READY backup (RPO)</th><th>Last run</th><th>Next run</th><th>Last drill</th></tr></thead><tbody>
{{range .Clusters}}{{$now := $.Now}}<tr class="{{.Colour}}" id="cluster-{{.Cluster}}">
<td data-h="Cluster"><b>{{.Cluster}}</b><br><span class="note">{{if .Schedule}}{{.Schedule}}{{else}}not scheduled{{end}}</span></td>
<td data-h="State">{{.Colour}}{{range .Problems}}<div class="why">{{.}}</div>{{end}}</td>
<td data-h="Newest READY">{{if .NewestReady}}{{.NewestBackup}}<br><span class="note">{{secs .RPOSeconds}} old</span>{{else}}none{{end}}</td>
<td data-h="Last run">{{with .LastRun}}{{if .OK}}ok{{else}}failed{{end}} <span class="note">{{.Finished.UTC.Format "2006-01-02 15:04:05Z"}}</span>{{if not .OK}}<div class="why">{{.Error}}</div>{{end}}{{range $i, $f := .Failures}}{{if lt $i 3}}<div class="note">failed {{$f.At.UTC.Format "01-02 15:04:05Z"}}: {{$f.Error}}</div>{{end}}{{end}}{{else}}—{{end}}</td>
<td data-h="Next run">{{until $now .NextRun}}</td>
<td data-h="Last drill">{{with .Drill}}{{with .Last}}{{if .OK}}passed{{else}}<b>failed</b>{{end}} {{.Finished.UTC.Format "2006-01-02 15:04:05Z"}}{{if .BackupID}}<br><span class="note">{{.BackupID}}, restore {{printf "%.1f" .RestoreSeconds}} s</span>{{end}}{{if not .OK}}<div class="why">{{.Error}}</div>{{end}}{{with .LastSuccess}}<div class="note">last verified restorable {{since $now .}}</div>{{end}}{{else}}not run yet{{end}}<div class="note">next {{until $now .NextRun}}</div>{{else}}no drill{{end}}</td>
</tr>
{{end}}</tbody></table>
</body></html>
`))
