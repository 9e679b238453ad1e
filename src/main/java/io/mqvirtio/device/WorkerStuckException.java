package io.mqvirtio.device;

/**
 * A worker ({@link Worker}) did not answer a command in time, or is gone. {@link #mayStillRun()}: the thread is alive,
 * so it may still touch its rings' memory and descriptors; its device is dead then (see the device's deadReason).
 */
public final class WorkerStuckException extends IllegalStateException {
    private final boolean mayStillRun;

    public WorkerStuckException(String message, boolean mayStillRun) {
        super(message);
        this.mayStillRun = mayStillRun;
    }

    public boolean mayStillRun() {
        return mayStillRun;
    }
}
