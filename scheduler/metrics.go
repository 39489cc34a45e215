package scheduler

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the scheduler's Prometheus metrics, in the hsmbackup_
// namespace with their units as suffixes. The gauges of the fleet's
// state (last success, drill result, lateness) are set from the store by
// every replica, so that any replica's /metrics tells the truth of the
// whole fleet; the counters and histograms count this replica's runs.
type Metrics struct {
	reg *prometheus.Registry

	backups        *prometheus.CounterVec
	backupDuration prometheus.Histogram
	drills         *prometheus.CounterVec
	drillRestore   prometheus.Histogram
	leaseHeld      *prometheus.GaugeVec

	lastSuccess      *prometheus.GaugeVec
	period           *prometheus.GaugeVec
	drillLastSuccess *prometheus.GaugeVec
	drillOK          *prometheus.GaugeVec
	clusterOK        *prometheus.GaugeVec
}

// NewMetrics returns the metrics, registered in a registry of their own
// with the Go and process collectors.
func NewMetrics(version string) *Metrics {
	const ns = "hsmbackup"
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.backups = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "backups_total",
		Help: "Scheduled backup runs by this replica, by cluster and result (success, failure)."}, []string{"cluster", "result"})
	m.backupDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "backup_duration_seconds",
		Help: "Time of a scheduled backup run, from the lease to the manifest.", Buckets: prometheus.ExponentialBuckets(0.25, 2, 16)})
	m.drills = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "drills_total",
		Help: "Restore drills run by this replica, by cluster and result (success, failure)."}, []string{"cluster", "result"})
	m.drillRestore = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "drill_restore_seconds",
		Help: "Measured restore time (RTO) of a drill's restore into its scratch HSM.", Buckets: prometheus.ExponentialBuckets(0.25, 2, 16)})
	m.leaseHeld = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "lease_held",
		Help: "1 while this replica holds the cluster's backup or drill lease."}, []string{"cluster", "kind"})
	m.lastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "last_success_timestamp_seconds",
		Help: "Creation time of the cluster's newest READY backup (Unix seconds), from the store."}, []string{"cluster"})
	m.period = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "schedule_period_seconds",
		Help: "Time between the cluster's last two scheduled slots."}, []string{"cluster"})
	m.drillLastSuccess = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "drill_last_success_timestamp_seconds",
		Help: "When the cluster's last successful drill finished (Unix seconds), from the store."}, []string{"cluster"})
	m.drillOK = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "drill_last_result",
		Help: "1 if the cluster's last drill succeeded, 0 if it failed."}, []string{"cluster"})
	m.clusterOK = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "cluster_ok",
		Help: "1 if the cluster is green on the status page, 0 if not."}, []string{"cluster"})
	build := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "build_info",
		Help: "The running version.", ConstLabels: prometheus.Labels{"version": version}})
	build.Set(1)
	m.reg.MustRegister(m.backups, m.backupDuration, m.drills, m.drillRestore, m.leaseHeld,
		m.lastSuccess, m.period, m.drillLastSuccess, m.drillOK, m.clusterOK, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry is where the metrics are registered.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func result(ok bool) string {
	if ok {
		return "success"
	}
	return "failure"
}

func (m *Metrics) ran(kind, cluster string, ok bool, d time.Duration) {
	if m == nil {
		return
	}
	switch kind {
	case KindBackup:
		m.backups.WithLabelValues(cluster, result(ok)).Inc()
		m.backupDuration.Observe(d.Seconds())
	case KindDrill:
		m.drills.WithLabelValues(cluster, result(ok)).Inc()
	}
}

// backedUp records a backup this replica took, until the next read of
// the fleet's state from the store.
func (m *Metrics) backedUp(cluster string, created time.Time) {
	if m != nil {
		m.lastSuccess.WithLabelValues(cluster).Set(float64(created.Unix()))
	}
}

func (m *Metrics) restored(d time.Duration) {
	if m != nil {
		m.drillRestore.Observe(d.Seconds())
	}
}

func (m *Metrics) held(kind, cluster string, held bool) {
	if m == nil {
		return
	}
	v := 0.0
	if held {
		v = 1
	}
	m.leaseHeld.WithLabelValues(cluster, kind).Set(v)
}

// clusters declares every configured cluster's series, at 0, so that a
// cluster that never ran is seen (and alerted on) rather than missing.
func (m *Metrics) clusters(cs []Cluster) {
	if m == nil {
		return
	}
	for _, c := range cs {
		for _, r := range []string{"success", "failure"} {
			if !c.Backup.IsZero() {
				m.backups.WithLabelValues(c.ID, r)
			}
			if !c.Drill.IsZero() {
				m.drills.WithLabelValues(c.ID, r)
			}
		}
		m.held(KindBackup, c.ID, false)
		if !c.Drill.IsZero() {
			m.held(KindDrill, c.ID, false)
		}
	}
}

// fleet sets the gauges of the fleet's state from a status report.
func (m *Metrics) fleet(st []ClusterStatus) {
	if m == nil {
		return
	}
	m.lastSuccess.Reset()
	m.period.Reset()
	m.drillLastSuccess.Reset()
	m.drillOK.Reset()
	m.clusterOK.Reset()
	for _, s := range st {
		if s.NewestReady != nil {
			m.lastSuccess.WithLabelValues(s.Cluster).Set(float64(s.NewestReady.Unix()))
		}
		if s.PeriodSeconds > 0 {
			m.period.WithLabelValues(s.Cluster).Set(s.PeriodSeconds)
		}
		if d := s.Drill; d != nil && d.Last != nil {
			ok := 0.0
			if d.Last.OK {
				ok = 1
			}
			m.drillOK.WithLabelValues(s.Cluster).Set(ok)
			if d.Last.LastSuccess != nil {
				m.drillLastSuccess.WithLabelValues(s.Cluster).Set(float64(d.Last.LastSuccess.Unix()))
			}
		}
		ok := 1.0
		if s.Colour == Red {
			ok = 0
		}
		m.clusterOK.WithLabelValues(s.Cluster).Set(ok)
	}
}
