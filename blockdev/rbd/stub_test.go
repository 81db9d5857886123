//go:build !(linux && cgo) || noceph

package rbd

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestStubConnect(t *testing.T) {
	c, err := Connect(context.Background(), Config{})
	if c != nil || !errors.Is(err, ErrNoCeph) || !strings.Contains(err.Error(), "built without Ceph support") {
		t.Fatalf("Connect = %v, %v; want ErrNoCeph", c, err)
	}
}
