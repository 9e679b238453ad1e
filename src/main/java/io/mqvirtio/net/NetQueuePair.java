package io.mqvirtio.net;

import io.mqvirtio.linux.Epoll;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.virtio.DriverQueue;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * One queue pair of a {@link NetDriver}, for one thread: send frames on its TX ring, receive frames from its RX
 * ring. No lock: give each thread its own pair. Frames are copied into (and out of) buffers in the memory shared
 * with the backend, behind the 12-byte virtio-net header the driver writes and strips.
 *
 * <p>Back-pressure: {@link #send} takes what fits in the TX ring and says how many it took; a full ring takes none.
 * A pair the driver disabled ({@link NetDriver#setQueuePairs}) takes nothing and delivers nothing.
 */
public final class NetQueuePair {
    static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private final int index;
    private final DriverQueue rx;
    private final DriverQueue tx;
    private final EventFd rxKick;
    private final EventFd txKick;
    private final EventFd rxCall;
    private final MemorySegment rxBufs;
    private final MemorySegment txBufs;
    private final long rxBufsGpa;
    private final long txBufsGpa;
    private final int bufSize;
    private final boolean mergeable;
    private final boolean csumOffload;  // F_CSUM: the device completes checksums we leave partial
    private final boolean guestCsum;    // F_GUEST_CSUM: frames may reach us with a partial checksum
    private final int[] rxSlotOfHead;
    private final int[] txSlotOfHead;
    private final int[] txFreeSlots;
    private final MemorySegment[] txFrames; // slot i's frame area, behind its header: what sendInPlace hands out
    private int txFree;
    private final long[] addr = new long[1];
    private final int[] len = new int[1];
    private Epoll waiter;
    volatile boolean enabled;

    final QueueCounters rxCounters = new QueueCounters();
    final QueueCounters txCounters = new QueueCounters();

    NetQueuePair(int index, DriverQueue rx, DriverQueue tx, EventFd rxKick, EventFd txKick, EventFd rxCall,
                 MemorySegment rxBufs, long rxBufsGpa, MemorySegment txBufs, long txBufsGpa, int bufSize, boolean mergeable,
                 boolean csumOffload, boolean guestCsum) {
        this.index = index;
        this.rx = rx;
        this.tx = tx;
        this.rxKick = rxKick;
        this.txKick = txKick;
        this.rxCall = rxCall;
        this.rxBufs = rxBufs;
        this.txBufs = txBufs;
        this.rxBufsGpa = rxBufsGpa;
        this.txBufsGpa = txBufsGpa;
        this.bufSize = bufSize;
        this.mergeable = mergeable;
        this.csumOffload = csumOffload;
        this.guestCsum = guestCsum;
        this.rxSlotOfHead = new int[rx.size()];
        this.txSlotOfHead = new int[tx.size()];
        this.txFreeSlots = new int[tx.size()];
        for (int i = 0; i < tx.size(); i++) {
            txFreeSlots[i] = i;
        }
        txFree = tx.size();
        this.txFrames = new MemorySegment[tx.size()];
        for (int i = 0; i < tx.size(); i++) {
            txFrames[i] = txBufs.asSlice((long) i * bufSize + VirtioNet.HDR_SIZE, maxFrame());
        }
        rx.disableInterrupts();
        tx.disableInterrupts();
        for (int slot = 0; slot < rx.size(); slot++) {
            postRx(slot);
        }
        rx.publish();
    }

    public int index() {
        return index;
    }

    /** The largest frame (without header) one receive buffer or one send can hold. */
    public int maxFrame() {
        return bufSize - VirtioNet.HDR_SIZE;
    }

    public boolean isEnabled() {
        return enabled;
    }

    private void postRx(int slot) {
        addr[0] = rxBufsGpa + (long) slot * bufSize;
        len[0] = bufSize;
        int head = rx.add(addr, len, 0, 1);
        rxSlotOfHead[head] = slot;
    }

    /** Tells the backend the RX ring has buffers (after setup, when it may have started on an empty ring). */
    void kickRx() {
        rxKick.signal();
    }

    private void reapTx() {
        int head;
        while ((head = tx.reap()) >= 0) {
            txFreeSlots[txFree++] = txSlotOfHead[head];
        }
    }

    /** Sends one frame (an Ethernet frame without header); returns 1 if taken, 0 if the ring is full. */
    public int send(MemorySegment frame) {
        return send(new MemorySegment[] {frame}, 0, 1);
    }

    public int send(ByteBuffer frame) {
        return send(MemorySegment.ofBuffer(frame));
    }

    /**
     * Sends {@code count} frames from {@code frames[offset..]}; returns how many the ring took (in order), with one
     * publish and at most one kick for the burst.
     */
    public int send(MemorySegment[] frames, int offset, int count) {
        if (!enabled) {
            return 0;
        }
        reapTx();
        int n = 0;
        long bytes = 0;
        while (n < count && txFree > 0) {
            MemorySegment f = frames[offset + n];
            long flen = f.byteSize();
            if (flen > maxFrame() || flen < 14) {
                throw new IllegalArgumentException("frame of " + flen + " bytes: must be 14.." + maxFrame());
            }
            int slot = txFreeSlots[--txFree];
            long base = zeroHeader(slot);
            if (pendingCsumStart >= 0) {
                txBufs.set(ValueLayout.JAVA_BYTE, base + VirtioNet.HDR_FLAGS, (byte) VirtioNet.HDR_F_NEEDS_CSUM);
                txBufs.set(LE16, base + VirtioNet.HDR_CSUM_START, (short) pendingCsumStart);
                txBufs.set(LE16, base + VirtioNet.HDR_CSUM_OFFSET, (short) pendingCsumOffset);
            }
            MemorySegment.copy(f, 0, txBufs, base + VirtioNet.HDR_SIZE, flen);
            queueTx(slot, base, flen);
            n++;
            bytes += flen;
        }
        finishSend(n, bytes);
        return n;
    }

    /** Writes a zero virtio_net_hdr_v1 (no offload asked) at the start of TX slot {@code slot}; returns its offset. */
    private long zeroHeader(int slot) {
        long base = (long) slot * bufSize;
        txBufs.set(ValueLayout.JAVA_LONG_UNALIGNED, base, 0L);
        txBufs.set(ValueLayout.JAVA_INT_UNALIGNED, base + 8, 0);
        return base;
    }

    /** Adds slot {@code slot}'s header and {@code flen}-byte frame (at {@code base}) to the TX ring, unpublished. */
    private void queueTx(int slot, long base, long flen) {
        addr[0] = txBufsGpa + base;
        len[0] = (int) (VirtioNet.HDR_SIZE + flen);
        txSlotOfHead[tx.add(addr, len, 1, 0)] = slot;
    }

    /** Publishes a burst of {@code n} frames: one release store, at most one kick. */
    private void finishSend(int n, long bytes) {
        if (n > 0) {
            tx.publish();
            if (tx.needsKick()) {
                txKick.signal();
                txCounters.add(QueueCounters.KICKS, 1);
            }
            txCounters.add(QueueCounters.PACKETS, n);
            txCounters.add(QueueCounters.BYTES, bytes);
        }
    }

    /** Writes the frames of {@link #sendInPlace} straight into the queue pair's TX buffers. */
    @FunctionalInterface
    public interface FrameWriter {
        /**
         * Writes frame {@code i} of a burst, an Ethernet frame without virtio-net header, at the start of
         * {@code buffer} and returns its length, 14 to {@code buffer.byteSize()} ({@link #maxFrame()}) bytes.
         * {@code buffer} is one of the pair's TX buffers in the memory shared with the backend, valid only during
         * the call; it still holds the last frame sent from it (zeros at first), so a writer that sends frames
         * of one shape may rewrite only the bytes that change, as DPDK's txonly rewrites only the headers.
         */
        int write(MemorySegment buffer, int i);
    }

    /**
     * Sends up to {@code count} frames that {@code writer} writes in place into the pair's TX buffers: no copy, the
     * zero-copy counterpart of {@link #send(MemorySegment[], int, int)}. Frame i is written only once the ring has
     * room for it; returns how many were sent (0 when the ring is full), with one publish and at most one kick. A
     * length out of range is an {@link IllegalArgumentException} (the frames written before it are still sent).
     */
    public int sendInPlace(int count, FrameWriter writer) {
        if (!enabled) {
            return 0;
        }
        reapTx();
        int n = 0;
        long bytes = 0;
        try {
            while (n < count && txFree > 0) {
                int slot = txFreeSlots[--txFree];
                int flen;
                try {
                    flen = writer.write(txFrames[slot], n);
                    if (flen < 14 || flen > maxFrame()) {
                        throw new IllegalArgumentException("frame of " + flen + " bytes: must be 14.." + maxFrame());
                    }
                } catch (RuntimeException | Error e) {
                    txFree++; // the slot goes back unused
                    throw e;
                }
                queueTx(slot, zeroHeader(slot), flen);
                n++;
                bytes += flen;
            }
        } finally {
            finishSend(n, bytes);
        }
        return n;
    }

    /**
     * Sends one frame whose L4 checksum is left for the device to complete (checksum offload, VIRTIO_NET_F_CSUM):
     * the field at {@code csumStart + csumOffset} holds the pseudo-header's partial sum, as the kernel's
     * CHECKSUM_PARTIAL does; the checksum covers the frame from {@code csumStart} on. When the backend cannot
     * complete checksums, the driver completes it here before sending. Returns 1 if taken, 0 if the ring is full.
     */
    public int sendWithChecksumOffload(MemorySegment frame, int csumStart, int csumOffset) {
        long flen = frame.byteSize();
        if (csumStart < 14 || csumOffset < 0 || (long) csumStart + csumOffset + 2 > flen) {
            throw new IllegalArgumentException("checksum at " + csumStart + "+" + csumOffset + " outside a frame of " + flen + " bytes");
        }
        if (!csumOffload) {
            MemorySegment copy = java.lang.foreign.Arena.ofAuto().allocate(flen);
            MemorySegment.copy(frame, 0, copy, 0, flen);
            Checksum.complete(copy, flen, csumStart, csumOffset);
            return send(copy);
        }
        pendingCsumStart = csumStart;
        pendingCsumOffset = csumOffset;
        try {
            return send(new MemorySegment[] {frame}, 0, 1);
        } finally {
            pendingCsumStart = -1;
        }
    }

    private int pendingCsumStart = -1;
    private int pendingCsumOffset;

    /**
     * Receives up to {@code max} frames: frame i is copied into {@code bufs[i]} (the header stripped) and its length
     * stored in {@code lengths[i]}. A frame longer than its buffer is cut and counted as an error. Returns the count.
     */
    public int receive(MemorySegment[] bufs, int[] lengths, int max) {
        if (!enabled) {
            return 0;
        }
        int n = 0;
        int head;
        boolean reposted = false;
        while (n < max && (head = rx.reap()) >= 0) {
            int used = rx.reapedLength();
            int slot = rxSlotOfHead[head];
            long base = (long) slot * bufSize;
            int numBuffers = mergeable ? Short.toUnsignedInt(rxBufs.get(LE16, base + VirtioNet.HDR_NUM_BUFFERS)) : 1;
            boolean partial = guestCsum && (rxBufs.get(ValueLayout.JAVA_BYTE, base + VirtioNet.HDR_FLAGS)
                    & VirtioNet.HDR_F_NEEDS_CSUM) != 0;
            int csumStart = Short.toUnsignedInt(rxBufs.get(LE16, base + VirtioNet.HDR_CSUM_START));
            int csumOffset = Short.toUnsignedInt(rxBufs.get(LE16, base + VirtioNet.HDR_CSUM_OFFSET));
            long at = copyOut(base + VirtioNet.HDR_SIZE, used - VirtioNet.HDR_SIZE, bufs[n], 0);
            boolean bad = used < VirtioNet.HDR_SIZE || used > bufSize || numBuffers < 1;
            postRx(slot);
            reposted = true;
            for (int k = 1; k < numBuffers && !bad; k++) {
                int h = rx.reap();
                if (h < 0) {
                    bad = true; // the backend published a frame without all its buffers
                    break;
                }
                int s = rxSlotOfHead[h];
                int l = rx.reapedLength();
                at += copyOut((long) s * bufSize, l, bufs[n], at);
                postRx(s);
            }
            if (bad) {
                rxCounters.add(QueueCounters.ERRORS, 1);
                continue;
            }
            lengths[n] = (int) Math.min(at, bufs[n].byteSize());
            if (partial && !Checksum.complete(bufs[n], lengths[n], csumStart, csumOffset)) {
                rxCounters.add(QueueCounters.ERRORS, 1); // a partial checksum we cannot complete: drop the frame
                continue;
            }
            rxCounters.add(QueueCounters.PACKETS, 1);
            rxCounters.add(QueueCounters.BYTES, at);
            n++;
        }
        if (reposted) {
            rx.publish();
            if (rx.needsKick()) {
                rxKick.signal();
                rxCounters.add(QueueCounters.KICKS, 1);
            }
        }
        return n;
    }

    /** Receives one frame into {@code buf} (position to limit); returns its length or -1 if none waits. */
    public int receive(ByteBuffer buf) {
        int[] l = new int[1];
        if (receive(new MemorySegment[] {MemorySegment.ofBuffer(buf)}, l, 1) == 0) {
            return -1;
        }
        buf.position(buf.position() + l[0]);
        return l[0];
    }

    private long copyOut(long from, long n, MemorySegment dst, long dstOff) {
        if (n <= 0) {
            return 0;
        }
        long room = Math.max(0, dst.byteSize() - dstOff);
        long c = Math.min(Math.min(n, room), bufSize - (from % bufSize));
        if (c > 0) {
            MemorySegment.copy(rxBufs, from, dst, dstOff, c);
        }
        if (c < n) {
            rxCounters.add(QueueCounters.ERRORS, 1); // cut: the caller's buffer is too small
        }
        return n;
    }

    /**
     * Waits up to {@code timeoutMillis} for a frame to arrive (the backend's call eventfd), instead of polling;
     * returns true if one may be waiting.
     */
    public boolean awaitReceive(int timeoutMillis) {
        if (waiter == null) {
            waiter = Epoll.create(1);
            waiter.add(rxCall, Epoll.EPOLLIN, 0);
        }
        if (rx.enableInterrupts()) {
            rx.disableInterrupts();
            return true;
        }
        int n = waiter.await(timeoutMillis);
        rxCall.drain();
        rx.disableInterrupts();
        return n > 0 || rx.usedPending() > 0;
    }

    public QueueCounters.Snapshot rxCounters() {
        return rxCounters.snapshot();
    }

    public QueueCounters.Snapshot txCounters() {
        return txCounters.snapshot();
    }

    void close() {
        if (waiter != null) {
            waiter.close();
        }
    }
}
