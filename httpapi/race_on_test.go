//go:build race

package httpapi

// raceEnabled: the race detector's shadow memory makes RSS meaningless.
const raceEnabled = true
