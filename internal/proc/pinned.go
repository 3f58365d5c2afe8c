package proc

import (
	"os/exec"
	"runtime"
)

// StartPinned starts cmd from an OS thread that lives until done is
// closed. The parent-death signal (SysProcAttr.Pdeathsig) fires when the
// *thread* that forked a child exits, and Go ends threads that a goroutine
// left locked (the QEMU harness does that on purpose when it enters a
// network namespace): a child started from an ordinary thread could be
// killed at any moment. The tests start QEMU, swtpm and MinIO this way.
func StartPinned(cmd *exec.Cmd, done <-chan struct{}) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := cmd.Start()
		errc <- err
		if err == nil {
			<-done
		}
		// The thread stays locked and ends with this goroutine.
	}()
	return <-errc
}
