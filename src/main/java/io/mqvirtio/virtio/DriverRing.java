package io.mqvirtio.virtio;

/**
 * The driver's side of one virtqueue, whatever its layout: add chains of buffers, publish them and decide whether to
 * kick, reap what the device used (one buffer id at a time, with its length), and ask for notifications. The device
 * is not trusted: a used entry naming a buffer that is not in flight, or an index that runs ahead, breaks the ring.
 * Single-threaded.
 */
public interface DriverRing {
    int size();

    /** Descriptors free for new chains. */
    int freeDescriptors();

    /** Chains added and not yet reaped. */
    int inFlight();

    boolean isBroken();

    String brokenReason();

    /** Whether {@link #addIndirect} may be used (INDIRECT_DESC negotiated and an indirect area given). */
    boolean supportsIndirect();

    /**
     * Adds a chain of {@code out} device-readable then {@code in} device-writable buffers (guest-physical address and
     * length each). Not visible to the device until {@link #publish()}.
     *
     * @return the chain's buffer id (what the device returns in the used ring, 0 to size-1), or -1 if the ring has
     *         too few free descriptors
     */
    int add(long[] addr, int[] len, int out, int in);

    /**
     * Adds up to {@code n} chains of one buffer each ({@code addr[i]}, {@code len[i]}), all device-readable or all
     * device-writable, in order, writing chain i's buffer id into {@code ids[i]}: what {@link #add} does chain by
     * chain, in one call and one short loop (a burst of TX frames, RX buffers posted again). Returns how many were
     * added: fewer than {@code n} only when the ring runs out of descriptors. Not visible until {@link #publish()}.
     */
    int addBurst(long[] addr, int[] len, int n, boolean writable, int[] ids);

    /** As {@link #add}, through one indirect descriptor (one ring slot for the whole chain). */
    int addIndirect(long[] addr, int[] len, int out, int in);

    /** Makes the chains added so far visible to the device. */
    void publish();

    /** Whether the device wants a kick for what was published since the last call. */
    boolean needsKick();

    /**
     * Used buffers the device has made visible that were not reaped yet (reads the device's index; validated). A
     * broken ring throws {@link VirtqueueException}, as {@link #reap()} does.
     */
    default int usedPending() {
        return usedPending(Integer.MAX_VALUE);
    }

    /**
     * {@link #usedPending()}, counted only as far as {@code enough}: the answer is exact below it, and at least
     * {@code enough} otherwise. A packed ring counts by reading the used descriptors one by one (a split ring's
     * used index counts the buffers, with IN_ORDER batches too); a merged frame's check asks only whether its buffers are there, which, asked of a full ring of every
     * frame in turn, read the whole ring each time (docs/performance.md, "Draining a ring of merged frames").
     */
    int usedPending(int enough);

    /** Reaps one used buffer: its id, or -1 if none is pending; {@link #reapedLength()} says what the device wrote. */
    int reap();

    /** Bytes the device wrote into the buffer the last {@link #reap()} returned. */
    int reapedLength();

    /** Asks the device not to notify (the driver polls). */
    void disableInterrupts();

    /** Asks the device to notify on the next used buffer; true if some arrived meanwhile (reap them first). */
    boolean enableInterrupts();
}
