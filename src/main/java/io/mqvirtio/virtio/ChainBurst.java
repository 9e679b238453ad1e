package io.mqvirtio.virtio;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;

/**
 * A burst of one-buffer chains popped together ({@link DeviceRing#popBurst}): the data path's common case (a TX frame
 * whose header and frame share one buffer, as Linux with ANY_LAYOUT and DPDK's virtio-user send them; an RX buffer
 * of one descriptor) without a {@link DescriptorChain} per chain. Each chain is one buffer, checked to lie inside
 * guest memory when popped: its guest address, this process's address of it, its length and the id the ring returns.
 *
 * <p>Why a burst: popping chain by chain costs a call, a chain object's bookkeeping and a region lookup per frame,
 * and its loads come one pop after the other. Here one call per burst runs a short loop over the ring's descriptors
 * (their cache misses overlap, as DPDK's vhost overlaps them with batches of four), remembers the last region a
 * buffer was in, and writes four array elements per chain.
 *
 * <p>A worker owns its bursts; nothing here is shared.
 */
public final class ChainBurst {
    /** The most chains one burst holds (a worker's budget per round). */
    public static final int MAX = 64;

    /** All of this process's memory: buffers are read through their checked host addresses, as the iovec does. */
    private static final MemorySegment ALL = MemorySegment.NULL.reinterpret(Long.MAX_VALUE);

    final long[] gpa = new long[MAX];
    final long[] host = new long[MAX];
    final int[] len = new int[MAX];
    final int[] id = new int[MAX];
    int count;
    boolean stoppedAtOther;
    /** Whether the last {@link DeviceRing#popBurst} took writable buffers (RX) or readable ones (TX). */
    boolean writable;
    @SuppressWarnings("unused")
    private long sink; // what touch loaded, kept so that the JIT keeps the loads

    /** Chains popped into this burst by the last {@link DeviceRing#popBurst}. */
    public int count() {
        return count;
    }

    /**
     * Whether the last {@link DeviceRing#popBurst} stopped before an available chain it does not take (another shape,
     * or one that breaks a rule): {@code pop} must take that one. False when it stopped because nothing more was
     * available (as far as it looked) or it had taken what it was asked for.
     */
    public boolean stoppedAtOther() {
        return stoppedAtOther;
    }

    /** Chain {@code i}'s buffer in guest-physical addresses. */
    public long guestAddress(int i) {
        return gpa[check(i)];
    }

    /** This process's address of chain {@code i}'s buffer (checked to lie in guest memory), for iovecs. */
    public long hostAddress(int i) {
        return host[check(i)];
    }

    /** Chain {@code i}'s buffer length. */
    public int length(int i) {
        return len[check(i)];
    }

    /** Chain {@code i}'s buffer id: what the ring returns when it is completed. */
    public int id(int i) {
        return id[check(i)];
    }

    /**
     * The bytes of chains {@code from..from+n-1} beyond {@code header} bytes each, or -1 if one of them is shorter
     * than {@code header}.
     */
    public long bytesBeyond(int from, int n, int header) {
        checkRange(from, n);
        long sum = 0;
        boolean shorter = false;
        for (int i = from; i < from + n; i++) {
            long l = Integer.toUnsignedLong(len[i]);
            shorter |= l < header;
            sum += l - header;
        }
        return shorter ? -1 : sum;
    }

    /** Chains {@code from..from+n-1} are in this burst. */
    public void checkRange(int from, int n) {
        if (from < 0 || n < 0 || from > count - n) {
            throw new IllegalArgumentException("chains " + from + "+" + n + " of a burst of " + count);
        }
    }

    private int check(int i) {
        if (i < 0 || i >= count) {
            throw new IndexOutOfBoundsException("chain " + i + " of a burst of " + count);
        }
        return i;
    }

    /**
     * Loads a byte of the first two cache lines of each buffer of at least {@code minLen} bytes (only inside the
     * buffer), so that their misses (lines the driver's CPU wrote) are in flight together before the frames are
     * read one by one. A short loop of its own: Java has no prefetch, and only as many loads overlap as loop bodies
     * fit in the CPU's reorder window.
     */
    public void touch(long minLen) {
        long sum = 0;
        int n = count;
        for (int i = 0; i < n; i++) {
            long l = Integer.toUnsignedLong(len[i]);
            if (l >= minLen && l != 0) {
                long a = host[i];
                sum += ALL.get(ValueLayout.JAVA_BYTE, a);
                if (l > 64) {
                    sum += ALL.get(ValueLayout.JAVA_BYTE, a + 64);
                }
            }
        }
        sink = sum;
    }

    void add(int k, long guestAddr, long hostAddr, int length, int bufferId) {
        gpa[k] = guestAddr;
        host[k] = hostAddr;
        len[k] = length;
        id[k] = bufferId;
    }
}
