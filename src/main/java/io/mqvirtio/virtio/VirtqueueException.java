package io.mqvirtio.virtio;

/**
 * The other side wrote something into a virtqueue that the spec forbids. The queue that saw it is broken from then
 * on (the spec's DEVICE_NEEDS_RESET); the message says what was wrong and where.
 */
public final class VirtqueueException extends RuntimeException {
    public VirtqueueException(String message) {
        super(message);
    }

    public VirtqueueException(String message, Throwable cause) {
        super(message, cause);
    }
}
