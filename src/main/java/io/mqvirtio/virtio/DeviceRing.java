package io.mqvirtio.virtio;

/**
 * The device's side of one virtqueue, whatever its layout (VIRTIO 1.3, 2.7 split, 2.8 packed): pop the chains the
 * driver made available, give chains back, complete them with a length, make completions visible, and decide about
 * notifications in both directions. {@link Rings} opens one from the negotiated features.
 *
 * <p>Everything the driver wrote is untrusted: a violation of the ring's rules throws {@link VirtqueueException}
 * and leaves the ring {@linkplain #isBroken() broken} (it pops nothing more). Each field the driver wrote is read
 * once. Single-threaded: one worker owns a ring.
 */
public interface DeviceRing {
    /** The number of entries (descriptors) of the ring. */
    int size();

    /** Chains the driver made available that were not popped yet (reads the driver's index; validated). */
    int available();

    /** Loads up to {@code max} available chains' first lines ahead of their pops; validates and consumes nothing. */
    void readAhead(int max);

    /**
     * Pops the next available chain into {@code chain} (its {@link DescriptorChain#id() buffer id} and
     * {@link DescriptorChain#slots() slots} included). Returns false if none is available.
     */
    boolean pop(DescriptorChain chain);

    /**
     * Pops up to {@code max} available chains that are each one buffer, readable ({@code writable} false: a TX frame)
     * or writable (an RX buffer), into {@code burst}; returns how many (also {@link ChainBurst#count()}). Stops before
     * the first chain that is not available, not of that shape (more than one descriptor, an indirect table, the
     * other direction) or not valid as {@link #pop} checks it: pop takes that one, with every check of its own (and
     * breaks the ring if it must), as if this had not looked at it ({@link ChainBurst#stoppedAtOther()} says it did).
     * It throws only where pop would before reading a chain: a ring broken earlier, a split ring's avail index beyond
     * its size. Popped
     * chains count for {@link #giveBack} as popped ones; {@link #completeBurst} completes them.
     */
    int popBurst(ChainBurst burst, int max, boolean writable);

    /**
     * Completes chains {@code from..from+n-1} of {@code burst} (popped by {@link #popBurst}) with {@code len} bytes
     * written into each, as {@link #complete} would one by one, in that order.
     */
    void completeBurst(ChainBurst burst, int from, int n, int len);

    /**
     * Gives back the last {@code chains} chains popped and not completed: the next pops return them again (a receive
     * path that took more buffers than the frame needed, a send that would block).
     */
    void giveBack(int chains);

    /** Returns {@code chain} to the driver with {@code len} bytes written into it; visible after {@link #publish()}. */
    void complete(DescriptorChain chain, int len);

    /** Makes every completion so far visible to the driver (one release store for the batch). */
    void publish();

    /**
     * Forgets the completions not {@linkplain #publish() published} (a ring that breaks without publishing them: a
     * fault on the memory it would write them to): {@link #base()} then counts only what the driver can see, and a
     * ring restarted at it takes those chains again. A split ring's restart reads the used index from its memory
     * anyway: nothing to do there.
     */
    default void discardUnpublished() {}

    /** Whether the driver wants a notification for what was published since the last call. */
    boolean needsNotification();

    /**
     * Asks the driver not to kick (while the device polls the ring anyway). Writes the ring only when the last
     * {@link #enableKicks} (or nothing yet) left kicks on: a polling worker calls this at every burst, and the driver
     * reads what it writes at every burst of its own.
     */
    void disableKicks();

    /**
     * Asks the driver to kick on the next chain it makes available. Returns true if chains are available that were
     * not popped (the caller must process them, or it could sleep with work pending).
     */
    boolean enableKicks();

    /**
     * Like {@link #enableKicks}, for a device waiting for more chains than those it has seen and given back: only
     * chains beyond those count as arrived (else the caller would spin on chains it cannot use).
     */
    boolean enableKicksForMore();

    /**
     * Logs every write of the ring into guest memory in {@code log} from now on, and flushes what was pending into the
     * previous log (null: stop logging). The dirty bits of a burst become visible with its {@link #publish()}, after
     * the writes they stand for.
     */
    void setLog(RingLog log);

    /**
     * Marks guest-physical bytes {@code gpa..gpa+len-1} written through a chain of this ring (a frame received into
     * its buffers), while logging: the bits go out with the next {@link #publish()}. Nothing without a log.
     */
    void markWritten(long gpa, long len);

    /** Whether the ring logs its writes ({@link #setLog}). */
    boolean isLogging();

    /** Page marks this ring has written into logs over its life. */
    long pagesLogged();

    /** Where the ring stands: what GET_VRING_BASE reports, and where a new ring resumes. */
    RingBase base();

    boolean isBroken();

    /** Why the ring broke, or null. */
    String brokenReason();

    /**
     * Says that the device only reads this ring's buffers (a transmit queue): the WRITE flag of a descriptor in a
     * packed ring's indirect table is then ignored, as DPDK's vhost ignores it, instead of breaking the ring when a
     * readable one follows it. DPDK's virtio PMD (22.11 and since) sends such tables for every frame of several
     * segments on a packed ring: it presets each table's descriptors WRITE and never clears the flag of the first,
     * the header's. Called by the ring's thread before its first pop.
     */
    default void deviceReadsOnly() {}
}
