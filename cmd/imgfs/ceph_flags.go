package main

import (
	"time"

	"github.com/urfave/cli/v2"

	"github.com/imgfs/imgfs/blockdev/rbd"
)

// cephFlags say how to reach the Ceph cluster of an rbd:POOL/IMAGE output.
type cephFlags struct {
	conf, id string
	timeout  time.Duration
}

func (f *cephFlags) flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "ceph-conf", Destination: &f.conf, Usage: "ceph.conf `FILE` of an rbd: output (default $CEPH_CONF, else /etc/ceph/ceph.conf)"},
		&cli.StringFlag{Name: "ceph-id", Destination: &f.id, Usage: "Ceph client `ID` (without client.) for an rbd: output (default from $CEPH_ARGS, else admin)"},
		&cli.DurationFlag{Name: "ceph-timeout", Value: rbd.DefaultTimeout, Destination: &f.timeout, Usage: "give up on an unreachable mon or OSD after `DURATION`"},
	}
}

// config converts the flags into an rbd.Config.
func (f *cephFlags) config() (rbd.Config, error) {
	if f.timeout <= 0 {
		return rbd.Config{}, usageError("--ceph-timeout %s: want a positive duration (30s, 1m)", f.timeout)
	}
	return rbd.Config{ConfFile: f.conf, ID: f.id, Timeout: f.timeout}, nil
}
