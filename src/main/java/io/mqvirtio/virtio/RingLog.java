package io.mqvirtio.virtio;

import io.mqvirtio.memory.DirtyLog;

/**
 * What a ring logs while the frontend migrates the guest (vhost-user.rst, "Migration"): the log, and the
 * guest-physical addresses of the parts of the ring the device writes. A split ring writes its used ring, logged at
 * {@code usedGpa} (the frontend's {@code log_guest_addr}, when it set VHOST_VRING_F_LOG; -1 otherwise); a packed
 * ring writes used descriptors into its descriptor ring ({@code usedGpa}: where that ring is) and its device event
 * suppression area ({@code eventGpa}). Data written through a chain's buffers is logged at the buffers' own
 * addresses ({@link DeviceRing#markWritten}).
 */
public record RingLog(DirtyLog log, long usedGpa, long eventGpa) {
    /** No address to log at. */
    public static final long NONE = -1;
}
