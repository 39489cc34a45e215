package scheduler

import (
	"fmt"
	"time"
)

// Settings are how a scheduler runs its schedules.
type Settings struct {
	// Concurrency is how many clusters are backed up at once.
	Concurrency int
	// Jitter is the most a run is delayed past its slot, at random.
	Jitter time.Duration
	// LeaseDuration is how long a leader's lease lasts unrenewed.
	LeaseDuration time.Duration
	// DrainTimeout is how long a stopping scheduler waits for its runs.
	DrainTimeout time.Duration
}

// DefaultSettings are the settings a config leaves unset.
var DefaultSettings = Settings{Concurrency: 4, Jitter: 30 * time.Second, LeaseDuration: 2 * time.Minute, DrainTimeout: time.Minute}

// The bounds of each setting, checked by the Check functions.
const (
	MaxConcurrency   = 64
	MaxJitter        = time.Hour
	MinLeaseDuration = 3 * time.Second
	MaxLeaseDuration = time.Hour
	MaxDrainTimeout  = time.Hour
)

// CheckConcurrency checks a concurrency setting.
func CheckConcurrency(n int) error {
	if n < 1 || n > MaxConcurrency {
		return fmt.Errorf("%d: want 1 to %d", n, MaxConcurrency)
	}
	return nil
}

// CheckJitter checks a jitter setting: 0 (none) to MaxJitter.
func CheckJitter(d time.Duration) error {
	if d < 0 || d > MaxJitter {
		return fmt.Errorf("%s: want 0s to %s", d, MaxJitter)
	}
	return nil
}

// CheckLeaseDuration checks a lease duration.
func CheckLeaseDuration(d time.Duration) error {
	if d < MinLeaseDuration || d > MaxLeaseDuration {
		return fmt.Errorf("%s: want %s to %s", d, MinLeaseDuration, MaxLeaseDuration)
	}
	return nil
}

// CheckDrainTimeout checks a drain timeout: 0 (no waiting) to
// MaxDrainTimeout.
func CheckDrainTimeout(d time.Duration) error {
	if d < 0 || d > MaxDrainTimeout {
		return fmt.Errorf("%s: want 0s to %s", d, MaxDrainTimeout)
	}
	return nil
}
