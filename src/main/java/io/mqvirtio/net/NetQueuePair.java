package io.mqvirtio.net;

import io.mqvirtio.linux.Epoll;
import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.virtio.DriverRing;
import io.mqvirtio.virtio.VirtqueueException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.concurrent.locks.LockSupport;

/**
 * One queue pair of a {@link NetDriver}, for one thread: send frames on its TX ring, receive frames from its RX
 * ring. No lock: give each thread its own pair. Frames are copied into (and out of) buffers in the memory shared
 * with the backend, behind the 12-byte virtio-net header the driver writes and strips.
 *
 * <p>One thread at a time: a pair may pass from one thread to another between calls (each call's end
 * happens-before the next call's start), but a call made while another thread is inside one on the same pair
 * (a wait included) throws {@code IllegalStateException} and touches nothing.
 *
 * <p>Back-pressure: {@link #send} takes what fits in the TX ring and says how many it took; a full ring takes none,
 * and {@link #awaitSend} sleeps until it has room again ({@link #awaitReady}: until a frame arrives or the TX ring has
 * room, for a thread that forwards).
 * A pair the driver disabled ({@link NetDriver#setQueuePairs}) takes nothing and delivers nothing. Once the driver is
 * closed, every operation throws {@code IllegalStateException("driver closed")}.
 *
 * <p>The backend is not trusted: a used entry or descriptor that breaks the ring's rules (a buffer not in flight or
 * not published, a used index that runs ahead, a wrong wrap counter) breaks that ring, and every later send or
 * receive on the pair throws {@link io.mqvirtio.virtio.VirtqueueException} with the reason (frames a receive had
 * already copied in that call are lost with it), and a wait for that ring ends at once, ready, so that the send
 * or receive after it says so; the other pairs go on. A frame the backend lied about in a way the
 * ring cannot see (a length or buffer count that does not fit) is dropped and counted instead ({@link #receive}).
 *
 * <p>A backend that closes its end of the vhost-user connection (it exited, crashed or was restarted) serves the
 * rings no more: a wait for frames or room ends at once, and a send that finds the TX ring full or a receive that finds
 * nothing checks the connection (every 100 ms at most), with a {@link VhostUserException} saying so; close the
 * driver. Frames the backend used before it went are still received first.
 */
public final class NetQueuePair {
    static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final VarHandle OWNER;

    static {
        try {
            OWNER = MethodHandles.lookup().findVarHandle(NetQueuePair.class, "owner", Thread.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    private final int index;
    private final DriverRing rx;
    private final DriverRing tx;
    private final EventFd rxKick;
    private final EventFd txKick;
    private final EventFd rxCall;
    private final EventFd txCall;       // the backend's signal of used TX buffers: awaited only by a wait for TX room
    private final EventFd wake;         // never shared: close() signals it to end a wait
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
    /** The epoll of the wait in progress: {@link #waiters}' one for its interest. */
    private Epoll waiter;
    /**
     * One epoll per interest (RX, TX, both), made at its first wait: each watches only the call eventfds of the rings
     * its waits are for, so that calls on the other ring (a backend that signals it in a loop) never wake them.
     */
    private final Epoll[] waiters = new Epoll[(RX_READY | TX_ROOM) + 1];
    /** The backend's vhost-user socket, watched for its hang-up (null: not watched): see {@link #checkBackend()}. */
    private volatile UnixSocket control;
    /** System.nanoTime of the next {@link #checkBackend()} that polls the socket. */
    private long nextBackendCheck;
    private volatile String lastRxError;
    volatile boolean enabled;
    /** Set once, by {@link NetDriver#close()}: see {@link #enter()}. */
    private volatile boolean closed;
    /** The thread inside an operation, null while none is (set and cleared by that thread): see {@link #enter()}. */
    private volatile Thread owner;

    final QueueCounters rxCounters = new QueueCounters();
    final QueueCounters txCounters = new QueueCounters();

    NetQueuePair(int index, DriverRing rx, DriverRing tx, EventFd rxKick, EventFd txKick, EventFd rxCall,
                 EventFd txCall, EventFd wake, MemorySegment rxBufs, long rxBufsGpa, MemorySegment txBufs,
                 long txBufsGpa, int bufSize, boolean mergeable, boolean csumOffload, boolean guestCsum) {
        this.index = index;
        this.rx = rx;
        this.tx = tx;
        this.rxKick = rxKick;
        this.txKick = txKick;
        this.rxCall = rxCall;
        this.txCall = txCall;
        this.wake = wake;
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

    /** Watches the backend's vhost-user socket: its hang-up ends waits and idle sends and receives with an error. */
    void watch(UnixSocket control) {
        this.control = control;
    }

    /** How often at most an idle send or receive polls the backend's socket for its hang-up. */
    private static final long BACKEND_CHECK_NANOS = 100_000_000L;

    /**
     * Throws if the backend has closed its end of the vhost-user connection; polls it every 100 ms at most (a send
     * on a full ring, a receive of nothing: paths where the backend is awaited, and a caller may loop on them).
     */
    private void checkBackend() {
        UnixSocket c = control;
        long now = System.nanoTime();
        if (c == null || now - nextBackendCheck < 0) {
            return;
        }
        nextBackendCheck = now + BACKEND_CHECK_NANOS;
        if (c.peerHungUp()) {
            throw backendGone();
        }
    }

    private VhostUserException backendGone() {
        return new VhostUserException("the backend closed the vhost-user connection: queue pair " + index
                + " is served no more; close the driver");
    }

    /** The largest frame (without header) one receive buffer or one send can hold. */
    public int maxFrame() {
        return bufSize - VirtioNet.HDR_SIZE;
    }

    public boolean isEnabled() {
        return enabled;
    }

    /*
     * Closing while the pair's thread works (NetDriver.close from another thread). The pair's memory is shared with
     * the backend through a mapping that close unmaps: an access after that is a SIGSEGV, which kills the JVM. So
     * every operation that touches the shared memory or the pair's descriptors runs between enter() and leave(),
     * and close waits for the pair to be out before it releases anything.
     *
     * Why this guard: it is a Dekker handshake on two volatile fields. The pair's thread sets owner (a CAS from
     * null to itself), then reads closed; close() writes closed, then reads owner. Volatile accesses are
     * sequentially consistent, so at least one of them sees the other's write: either the operation sees closed and
     * throws before touching anything, or close sees the owner and waits until it is cleared. The CAS also finds
     * a second thread calling in while another is inside (it fails on another's owner): that call throws instead of
     * running the ring alongside the first, outside the guard (close would then have released the pair under it).
     * The cost per operation (per burst, not per frame) is one CAS (on x86 a locked instruction, some 20 cycles,
     * as the volatile store of a flag it replaced), one load and one release store (a plain store): no lock, no
     * allocation. A lock per operation would cost more and still need the flag for "driver closed"; liveness
     * checks of an FFM shared arena alone (closing one handshakes with every thread, and a racing access fails with
     * IllegalStateException) cost nothing per access but protect memory only, not the eventfds and the epoll
     * instance, whose numbers the kernel may hand to someone else once closed. The driver has that arena as well (see NetDriver): it is what makes a pair
     * whose thread never leaves safe (a FrameWriter that blocks), and any buffer a writer kept past its call.
     */

    /**
     * Marks the calling thread as inside an operation, or throws if the driver is closed or another thread is inside
     * one. Returns false if this thread already was (a FrameWriter calling back into its pair): only the outermost
     * operation leaves.
     */
    private boolean enter() {
        Thread me = Thread.currentThread();
        while (!OWNER.compareAndSet(this, null, me)) {
            Thread other = owner;
            if (other == me) {
                return false;
            }
            if (other != null) {
                throw new IllegalStateException("queue pair " + index + " is in use by another thread (" + other
                        + "): use a pair from one thread at a time");
            }
        }
        if (closed) {
            OWNER.setRelease(this, null);
            throw new IllegalStateException("driver closed");
        }
        return true;
    }

    private void leave(boolean entered) {
        if (entered) {
            OWNER.setRelease(this, null); // release: what the operation did happens-before close's next read
        }
    }

    /**
     * The pair was enabled again: a thread waiting on it while it was disabled goes on waiting as on an enabled pair
     * (its interrupts on, the ring looked at). Before, that wait ended only at a call, and none came: the driver's
     * interrupts were off from its last wait, so it slept out its whole timeout while frames arrived.
     */
    void enabledAgain() {
        wake.signal(); // ours alone; the wait tells it from close's by closed
    }

    /** Whether {@code t} is inside an operation of this pair (close called back from its FrameWriter). */
    boolean isInside(Thread t) {
        return owner == t;
    }

    /** Makes every later operation throw "driver closed" and wakes one waiting in {@link #awaitReady}. */
    void shut() {
        closed = true;
        enabled = false;
        wake.signal(); // not rxCall: the backend can make that one block (see awaitCall)
    }

    /**
     * Waits until the pair's thread is out of its operation, until {@code deadlineNanos} (System.nanoTime) at most;
     * returns whether it is out (then it never touches the pair's memory or descriptors again).
     */
    boolean awaitLeft(long deadlineNanos) {
        for (int spins = 0; owner != null; spins++) {
            if (System.nanoTime() - deadlineNanos >= 0) {
                return false;
            }
            if (spins < 1000) {
                Thread.onSpinWait(); // a burst takes microseconds
            } else {
                LockSupport.parkNanos(100_000);
            }
        }
        return true;
    }

    private void postRx(int slot) {
        addr[0] = rxBufsGpa + (long) slot * bufSize;
        len[0] = bufSize;
        int head = rx.add(addr, len, 0, 1);
        rxSlotOfHead[head] = slot;
    }

    /** Tells the backend the RX ring has buffers (after setup, when it may have started on an empty ring). */
    void kickRx() {
        kick(rxKick);
    }

    /**
     * Kicks the backend. The backend shares each kick eventfd's open file, and so its O_NONBLOCK flag, with us: a
     * backend that clears it and fills the counter would make the write wait for good. The eventfd watchdog
     * releases such a write within about 100 ms ({@link EventFd#signal()}); this pair then kicks no more (the
     * backend is hostile), and {@link #fault()} says why.
     */
    private boolean kick(EventFd k) {
        if (fault != null) {
            return false;
        }
        try {
            if (k.signal()) {
                return true;
            }
            fault = "the backend filled kick eventfd of pair " + index + " to its limit with O_NONBLOCK cleared; "
                    + "this pair kicks no more";
        } catch (RuntimeException e) {
            fault = "kicking the backend on pair " + index + " failed: " + e.getMessage();
        }
        return false;
    }

    private volatile String fault;

    /** Why this pair no longer kicks its backend (a backend that blocked the kick), or null. */
    public String fault() {
        return fault;
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
     *
     * @throws IndexOutOfBoundsException if {@code frames} has no {@code count} frames from {@code offset}
     * @throws IllegalArgumentException  if one of them is null, of a length out of 14..{@link #maxFrame()}, of an
     *                                   arena closed or this thread may not use: before any frame is sent
     */
    public int send(MemorySegment[] frames, int offset, int count) {
        boolean entered = enter();
        try {
            checkFrames(frames, offset, count);
            int n = enabled ? sendCopies(frames, offset, count) : 0;
            if (n == 0 && count > 0 && txFree == 0) {
                checkBackend(); // the ring is full: is the backend still there to empty it?
            }
            return n;
        } finally {
            leave(entered);
        }
    }

    /**
     * The caller's frames, checked before any is sent: a bad one in the middle of a burst threw after the frames
     * before it had gone into the ring, and the caller, with an exception instead of a count, could not tell which
     * (sent again, they went twice).
     */
    private void checkFrames(MemorySegment[] frames, int offset, int count) {
        java.util.Objects.checkFromIndexSize(offset, count, frames.length);
        Thread me = Thread.currentThread();
        for (int i = offset; i < offset + count; i++) {
            MemorySegment f = frames[i];
            if (f == null || !f.scope().isAlive() || !f.isAccessibleBy(me)) {
                throw new IllegalArgumentException("frame " + i + " is " + (f == null ? "null" : !f.scope().isAlive()
                        ? "of a closed arena" : "confined to another thread"));
            }
            long flen = f.byteSize();
            if (flen > maxFrame() || flen < 14) {
                throw new IllegalArgumentException("frame of " + flen + " bytes: must be 14.." + maxFrame());
            }
        }
    }

    private int sendCopies(MemorySegment[] frames, int offset, int count) {
        checkNotWriting();
        reapTx();
        int n = 0;
        sentBytes = 0;
        try {
            while (n < count && txFree > 0) {
                int chunk = Math.min(Math.min(count - n, txFree), BURST);
                int k = 0;
                try {
                    for (; k < chunk; k++) {
                        MemorySegment f = frames[offset + n + k];
                        long flen = f.byteSize(); // 14..maxFrame(): checkFrames
                        long base = zeroHeader(txFreeSlots[txFree - 1 - k]);
                        if (pendingCsumStart >= 0) {
                            txBufs.set(ValueLayout.JAVA_BYTE, base + VirtioNet.HDR_FLAGS, (byte) VirtioNet.HDR_F_NEEDS_CSUM);
                            txBufs.set(LE16, base + VirtioNet.HDR_CSUM_START, (short) pendingCsumStart);
                            txBufs.set(LE16, base + VirtioNet.HDR_CSUM_OFFSET, (short) pendingCsumOffset);
                        }
                        MemorySegment.copy(f, 0, txBufs, base + VirtioNet.HDR_SIZE, flen);
                        burstGpa[k] = txBufsGpa + base;
                        burstLen[k] = (int) (VirtioNet.HDR_SIZE + flen);
                    }
                } finally {
                    n += addTxBurst(k);
                }
            }
        } finally {
            finishSend(n, sentBytes);
        }
        return n;
    }

    /**
     * Adds the {@code k} frames written into the top {@code k} free slots ({@link #burstGpa}, {@link #burstLen}) to
     * the TX ring with one {@link DriverRing#addBurst}, and takes those slots; returns how many it added, and adds
     * their frames' bytes to {@link #sentBytes}.
     */
    private int addTxBurst(int k) {
        int added = k == 0 ? 0 : tx.addBurst(burstGpa, burstLen, k, false, burstIds);
        for (int i = 0; i < added; i++) {
            txSlotOfHead[burstIds[i]] = txFreeSlots[txFree - 1 - i];
            sentBytes += burstLen[i] - VirtioNet.HDR_SIZE;
        }
        txFree -= added;
        return added;
    }

    /** The frame bytes a send added to the ring (without headers), for its counters. */
    private long sentBytes;

    /** Writes a zero virtio_net_hdr_v1 (no offload asked) at the start of TX slot {@code slot}; returns its offset. */
    private long zeroHeader(int slot) {
        long base = (long) slot * bufSize;
        txBufs.set(ValueLayout.JAVA_LONG_UNALIGNED, base, 0L);
        txBufs.set(ValueLayout.JAVA_INT_UNALIGNED, base + 8, 0);
        return base;
    }

    /** Publishes a burst of {@code n} frames: one release store, at most one kick. */
    private void finishSend(int n, long bytes) {
        if (n > 0) {
            tx.publish();
            if (tx.needsKick() && kick(txKick)) {
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
         * the call (once the driver is closed, any access through it throws IllegalStateException); it still holds
         * the last frame sent from it (zeros at first), so a writer that sends frames of one shape may rewrite only
         * the bytes that change, as DPDK's txonly rewrites only the headers. A writer may receive on the pair, but
         * not send on it (that throws IllegalStateException): the burst it belongs to is being written.
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
        boolean entered = enter();
        try {
            int n = enabled ? sendWritten(count, writer) : 0;
            if (n == 0 && count > 0 && txFree == 0) {
                checkBackend();
            }
            return n;
        } finally {
            leave(entered);
        }
    }

    /**
     * Up to {@link #BURST} frames at a time written into free slots, then added to the ring with one
     * {@link DriverRing#addBurst}: a frame the writer got wrong ends the call, and those written before it go.
     * Measured against one add per frame (paired windows, our driver into DPDK's vhost): 1.31x (split) and 1.33x
     * (packed) at 64 B, 1.00x / 1.10x at 1500 B.
     */
    private int sendWritten(int count, FrameWriter writer) {
        checkNotWriting();
        reapTx();
        int n = 0;
        sentBytes = 0;
        writing = true;
        try {
            while (n < count && txFree > 0) {
                int chunk = Math.min(Math.min(count - n, txFree), BURST);
                int k = 0;
                try {
                    for (; k < chunk; k++) {
                        int slot = txFreeSlots[txFree - 1 - k];
                        int flen = writer.write(txFrames[slot], n + k);
                        if (flen < 14 || flen > maxFrame()) {
                            throw new IllegalArgumentException("frame of " + flen + " bytes: must be 14.." + maxFrame());
                        }
                        burstGpa[k] = txBufsGpa + zeroHeader(slot);
                        burstLen[k] = VirtioNet.HDR_SIZE + flen;
                    }
                } finally {
                    n += addTxBurst(k);
                }
            }
        } finally {
            writing = false;
            finishSend(n, sentBytes);
        }
        return n;
    }

    /**
     * True while {@link #sendInPlace} runs its writer: the frames written so far sit in slots not yet taken and in
     * this pair's burst arrays, so the writer may not send on this pair (it may receive).
     */
    private boolean writing;

    private void checkNotWriting() {
        if (writing) {
            throw new IllegalStateException("a FrameWriter sent on its own pair: it may write its buffer and receive, "
                    + "not send");
        }
    }

    /** The most frames one {@link DriverRing#addBurst} of {@link #sendInPlace} adds. */
    private static final int BURST = 64;
    private final long[] burstGpa = new long[BURST];
    private final int[] burstLen = new int[BURST];
    private final int[] burstIds = new int[BURST];

    /**
     * Sends one frame whose L4 checksum is left for the device to complete (checksum offload, VIRTIO_NET_F_CSUM):
     * the field at {@code csumStart + csumOffset} holds the pseudo-header's partial sum, as the kernel's
     * CHECKSUM_PARTIAL does; the checksum covers the frame from {@code csumStart} on. When the backend cannot
     * complete checksums, the driver completes it here before sending. Returns 1 if taken, 0 if the ring is full.
     */
    public int sendWithChecksumOffload(MemorySegment frame, int csumStart, int csumOffset) {
        long flen = frame.byteSize();
        if (flen > maxFrame()) { // before the copy below: a caller's slice of gigabytes must not be copied first
            throw new IllegalArgumentException("frame of " + flen + " bytes: must be 14.." + maxFrame());
        }
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
     * A frame the backend lied about (see {@link #takeFrame}) is dropped and counted as an error
     * ({@link #lastRxError()} says why).
     *
     * @throws IllegalArgumentException if {@code max} is negative or more than {@code bufs} or {@code lengths} hold,
     *                                  or one of the first {@code max} buffers is null, read-only, of an arena
     *                                  closed or this thread may not use: before any frame is taken (the frames
     *                                  stay in the ring for the next receive)
     */
    public int receive(MemorySegment[] bufs, int[] lengths, int max) {
        boolean entered = enter();
        try {
            checkBuffers(bufs, lengths, max);
            int n = enabled ? receiveFrames(bufs, lengths, max) : 0;
            if (n == 0 && max > 0 && enabled) {
                checkBackend();
            }
            return n;
        } finally {
            leave(entered);
        }
    }

    /**
     * The caller's buffers, checked before a frame is taken: a copy into one that fails takes the frame's RX buffers
     * out of the ring with it (reaped, never posted again), and when all of them were gone the pair received nothing
     * more, for good.
     */
    private static void checkBuffers(MemorySegment[] bufs, int[] lengths, int max) {
        if (max < 0 || max > bufs.length || max > lengths.length) {
            throw new IllegalArgumentException("receive of " + max + " frames into " + bufs.length + " buffers and "
                    + lengths.length + " lengths");
        }
        Thread me = Thread.currentThread();
        for (int i = 0; i < max; i++) {
            MemorySegment b = bufs[i];
            String bad = b == null ? "null" : b.isReadOnly() ? "read-only" : !b.scope().isAlive() ? "of a closed arena"
                    : !b.isAccessibleBy(me) ? "confined to another thread" : null;
            if (bad != null) {
                throw new IllegalArgumentException("receive buffer " + i + " is " + bad);
            }
        }
    }

    private int receiveFrames(MemorySegment[] bufs, int[] lengths, int max) {
        int n = 0;
        int head;
        boolean reposted = false;
        while (n < max && (head = rx.reap()) >= 0) {
            reposted = true;
            long base = (long) rxSlotOfHead[head] * bufSize;
            // The header's fields, each read once: the backend can rewrite them at any moment.
            boolean partial = guestCsum && (rxBufs.get(ValueLayout.JAVA_BYTE, base + VirtioNet.HDR_FLAGS)
                    & VirtioNet.HDR_F_NEEDS_CSUM) != 0;
            int csumStart = Short.toUnsignedInt(rxBufs.get(LE16, base + VirtioNet.HDR_CSUM_START));
            int csumOffset = Short.toUnsignedInt(rxBufs.get(LE16, base + VirtioNet.HDR_CSUM_OFFSET));
            MemorySegment dst = bufs[n];
            long len = takeFrame(head, dst);
            if (len < 0) {
                continue;
            }
            int kept = (int) Math.min(len, dst.byteSize());
            if (kept < len) {
                rxError("a frame of " + len + " bytes was cut to its " + dst.byteSize() + "-byte buffer");
            }
            if (partial && !Checksum.complete(dst, kept, csumStart, csumOffset)) {
                rxError("a partial checksum at " + csumStart + "+" + csumOffset + " that cannot be completed");
                continue; // drop the frame
            }
            lengths[n] = kept;
            rxCounters.add(QueueCounters.PACKETS, 1);
            rxCounters.add(QueueCounters.BYTES, len);
            n++;
        }
        if (reposted) {
            rx.publish();
            if (rx.needsKick() && kick(rxKick)) {
                rxCounters.add(QueueCounters.KICKS, 1);
            }
        }
        return n;
    }

    /**
     * Copies the frame whose first buffer the used ring just returned ({@code head}) into {@code dst}, with
     * MRG_RXBUF taking its further buffers from the used ring too, and reposts every buffer it takes. Returns the
     * frame's length (without header), or -1 when the backend lied about it: the frame is dropped and counted.
     *
     * <p>With MRG_RXBUF a frame spans {@code num_buffers} buffers, this one included (VIRTIO 1.3, 5.1.6.4), and the
     * device must have used them together, so that at least that many are in the used ring, and filled every one
     * but the last to its full length (5.1.6.4.1). Each used length and num_buffers is checked against that before
     * a byte is copied: a lie never makes the driver copy bytes the device did not write (a frame stitched from
     * stale buffer contents), read past a buffer, or wait. A frame with a bad length still takes the buffers it
     * claims, as far as they are in the ring, so that they are not taken for frames of their own; a num_buffers
     * out of range (0, or more than the ring holds) claims nothing but its head. The count of used buffers is the
     * device's to take back until they are reaped: a reap that finds none is a lie about the frame too.
     */
    private long takeFrame(int head, MemorySegment dst) {
        int used = rx.reapedLength();
        int slot = rxSlotOfHead[head];
        long base = (long) slot * bufSize;
        if (Integer.compareUnsigned(used, VirtioNet.HDR_SIZE) < 0) {
            postRx(slot);
            return rxError("a used length of " + used + " bytes, shorter than the virtio-net header");
        }
        int numBuffers = mergeable ? Short.toUnsignedInt(rxBufs.get(LE16, base + VirtioNet.HDR_NUM_BUFFERS)) : 1;
        if (numBuffers < 1 || numBuffers > rx.size()) {
            postRx(slot);
            return rxError("num_buffers " + numBuffers + " (a ring of " + rx.size() + ")");
        }
        int more = numBuffers - 1;
        int there = more == 0 ? 0 : rx.usedPending(more); // whether they are all there, not how many more
        String lie = null;
        if (more > there) {
            lie = "num_buffers " + numBuffers + " with " + there + " more used buffer" + (there == 1 ? "" : "s")
                    + " in the ring";
        } else if (Integer.compareUnsigned(used, bufSize) > 0 || (more > 0 && used != bufSize)) {
            lie = "buffer 1 of " + numBuffers + " used for " + Integer.toUnsignedString(used) + " bytes of " + bufSize;
        }
        long len = used - VirtioNet.HDR_SIZE;
        if (lie == null) {
            copyOut(base + VirtioNet.HDR_SIZE, len, dst, 0);
        }
        postRx(slot);
        int take = Math.min(more, there);
        for (int k = 1; k <= take; k++) {
            // -1 although usedPending counted it: the device took a used entry back in between (a packed used
            // descriptor's flags rewritten)
            int h = rx.reap();
            if (h < 0) {
                lie = lie != null ? lie : "num_buffers " + numBuffers + " with " + (k - 1) + " more used buffer"
                        + (k == 2 ? "" : "s") + " in the ring, " + there + " when counted";
                break;
            }
            int l = rx.reapedLength();
            int s = rxSlotOfHead[h];
            if (lie == null) {
                boolean last = k == more;
                if (Integer.compareUnsigned(l, bufSize) > 0 || (!last && l != bufSize) || l == 0) {
                    lie = "buffer " + (k + 1) + " of " + numBuffers + " used for " + Integer.toUnsignedString(l)
                            + " bytes of " + bufSize;
                } else {
                    copyOut((long) s * bufSize, l, dst, len);
                    len += l;
                }
            }
            postRx(s);
        }
        if (lie != null) {
            return rxError(lie);
        }
        if (len < 14) {
            return rxError("a frame of " + len + " bytes, shorter than an Ethernet header");
        }
        return len;
    }

    /** Counts a receive error and records why; returns -1 (a dropped frame). Not on the fast path. */
    private long rxError(String why) {
        lastRxError = why;
        rxCounters.add(QueueCounters.ERRORS, 1);
        return -1;
    }

    /** Why the last receive error happened (a frame dropped or cut), or null if none did. */
    public String lastRxError() {
        return lastRxError;
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

    /**
     * Copies {@code n} bytes of RX buffer memory from {@code from} (checked by the caller to lie in one buffer) to
     * {@code dst} at {@code at}, as far as {@code dst} has room.
     */
    private void copyOut(long from, long n, MemorySegment dst, long at) {
        long c = Math.min(n, dst.byteSize() - at);
        if (c > 0) {
            MemorySegment.copy(rxBufs, from, dst, at, c);
        }
    }

    /**
     * Waits up to {@code timeoutMillis} (0 or more: the backend may never send, so no wait is endless) for a frame
     * to arrive (the backend's call eventfd), instead of polling; returns true if the ring has a used entry to
     * receive (receive may still drop it, if the backend lied in it) or the backend broke the ring (receive then
     * throws, saying why: the wait does not sleep on a ring nobody serves), false at the timeout. A call the backend
     * signals with nothing used does not end the wait. Closing the driver ends it (false), and so does an interrupt
     * of the waiting thread (false, within {@link #INTERRUPT_CHECK_MS} ms; its interrupt status kept, as
     * {@link java.nio.channels.Selector#select(long)} keeps it); a thread already interrupted does not wait.
     */
    public boolean awaitReceive(int timeoutMillis) {
        return awaitReady(RX_READY, timeoutMillis) != 0;
    }

    /**
     * Waits up to {@code timeoutMillis} for room in the TX ring (a {@link #send} that returned 0: the backend has not
     * used the buffers yet), instead of spinning or sleeping; returns true if a send now takes at least one frame
     * (or throws: a ring the backend broke), false at the timeout. As {@link #awaitReceive}: the backend's TX call
     * eventfd wakes it, asked for (EVENT_IDX, or the ring's flags) only while the pair waits on a full ring; a call
     * with nothing used does not end it; closing the driver or an interrupt ends it (false), a backend that closed
     * the connection ends it with a {@link VhostUserException}.
     */
    public boolean awaitSend(int timeoutMillis) {
        return awaitReady(TX_ROOM, timeoutMillis) != 0;
    }

    /** {@link #awaitReady}'s interests, and what it returns: a frame to receive, room to send. */
    public static final int RX_READY = 1, TX_ROOM = 2;

    /**
     * The wait of a thread that both receives and sends on the pair (a forwarder): until a frame is there to receive
     * ({@link #RX_READY} in {@code interest}) or the TX ring has room ({@link #TX_ROOM}), whichever comes first, up
     * to {@code timeoutMillis}; returns which of those in {@code interest} hold (both may), 0 at the timeout, at
     * close or at an interrupt. Each as {@link #awaitReceive} and {@link #awaitSend} say; no allocation.
     *
     * @throws IllegalArgumentException if {@code interest} names neither, or something else, or the timeout is
     *                                  negative
     */
    public int awaitReady(int interest, int timeoutMillis) {
        if (timeoutMillis < 0) {
            throw new IllegalArgumentException("timeout must be 0 or more milliseconds: " + timeoutMillis);
        }
        if (interest == 0 || (interest & ~(RX_READY | TX_ROOM)) != 0) {
            throw new IllegalArgumentException("interest must be RX_READY, TX_ROOM or both: " + interest);
        }
        boolean entered = enter();
        try {
            return awaitCall(interest, timeoutMillis);
        } finally {
            leave(entered);
        }
    }

    private int awaitCall(int interest, int timeoutMillis) {
        waiter = waiters[interest];
        if (waiter == null) {
            waiter = newWaiter(interest);
            waiters[interest] = waiter;
        }
        waiter.await(0); // takes the edges of calls for buffers already used: they must not wake the wait
        long deadline = System.nanoTime() + timeoutMillis * 1_000_000L;
        Thread me = Thread.currentThread();
        while (true) {
            if (!enabled) {
                if (!awaitEnabled(deadline)) {
                    return 0;
                }
                continue; // enabled again: its interrupts on, and its ring looked at, before any wait
            }
            int ready = armInterrupts(interest);
            if (ready != 0) {
                disarmInterrupts(interest);
                return ready;
            }
            if (deadline - System.nanoTime() <= 0 || me.isInterrupted()) {
                disarmInterrupts(interest);
                return 0;
            }
            int n = awaitUntil(deadline);
            disarmInterrupts(interest);
            ready = readyNow(interest);
            if (ready != 0) {
                return ready;
            }
            if (closing(n)) {
                return 0;
            }
            if (hungUp(n)) {
                throw backendGone();
            }
            // no event (a slice of the wait ended, or a signal interrupted epoll_wait: the deadline and the interrupt
            // status are checked above), or a call with nothing used (a backend that signals in a loop, or a call
            // for a frame taken since): neither ends the wait, or a thread waiting on its pair would return, find
            // nothing and wait again once per call, as fast as the backend signals
        }
    }

    /**
     * The epoll of {@link #awaitCall}'s waits for {@code interest}, whole or not at all: one that an add failed in
     * (the kernel's limit of watches per user, fs.epoll.max_user_watches; memory) is closed, not kept for later waits
     * without the wake eventfd (close could not end them) or a call eventfd (they would see work only every 50 ms).
     */
    private Epoll newWaiter(int interest) {
        Epoll e = Epoll.create(4);
        try {
            // Edge-triggered, and the counter is never read: the backend shares the call eventfd's open file and
            // can clear its O_NONBLOCK, and a read(2) of an empty counter would then block for good. Each write to
            // an eventfd is an edge, so every call the backend signals wakes one wait without a read.
            if ((interest & RX_READY) != 0) {
                e.add(rxCall, Epoll.EPOLLIN | Epoll.EPOLLET, EVENT_CALL);
            }
            if ((interest & TX_ROOM) != 0) {
                e.add(txCall, Epoll.EPOLLIN | Epoll.EPOLLET, EVENT_TX_CALL);
            }
            e.add(wake, Epoll.EPOLLIN, EVENT_WAKE); // ours alone: how close() ends a wait
            UnixSocket c = control;
            if (c != null) {
                // the backend's hang-up only (never EPOLLIN: what it sends there must not wake the wait): it stays
                // signalled, so every later wait ends at once, with the error
                e.add(c, Epoll.EPOLLRDHUP, EVENT_HANGUP);
            }
        } catch (RuntimeException ex) {
            e.close();
            throw ex;
        }
        return e;
    }

    /**
     * Asks the backend for a notification on each ring of {@code interest} that is not ready yet, and says which are
     * ready (then reap them before sleeping). TX with a free slot is ready without asking: a wait for room on a ring
     * that has room never turns on the TX ring's notifications, which the driver otherwise never wants (it polls TX).
     * A ring the backend broke is ready without asking too: the receive or send that follows says why, where a wait
     * would sleep on a ring nobody serves.
     */
    private int armInterrupts(int interest) {
        int ready = 0;
        if ((interest & RX_READY) != 0 && (rx.isBroken() || rx.enableInterrupts())) {
            ready |= RX_READY;
        }
        if ((interest & TX_ROOM) != 0 && (txReadyWithoutAsking() || tx.enableInterrupts())) {
            ready |= TX_ROOM;
        }
        return ready;
    }

    /** A free TX slot, or a TX ring the backend broke (see {@link #armInterrupts}). */
    private boolean txReadyWithoutAsking() {
        return txFree > 0 || tx.isBroken();
    }

    private void disarmInterrupts(int interest) {
        if ((interest & RX_READY) != 0) {
            rx.disableInterrupts();
        }
        if ((interest & TX_ROOM) != 0) {
            tx.disableInterrupts();
        }
    }

    /** Which rings of {@code interest} are ready after a wait (their notifications off again). */
    private int readyNow(int interest) {
        int ready = 0;
        if ((interest & RX_READY) != 0 && usedOrBroken(rx)) {
            ready |= RX_READY;
        }
        if ((interest & TX_ROOM) != 0 && (txFree > 0 || usedOrBroken(tx))) {
            ready |= TX_ROOM;
        }
        return ready;
    }

    /**
     * Whether {@code ring} has a used buffer, or is broken: by the backend's lie this look finds (a packed ring reads
     * the ids of its used descriptors, a split one its used index), which is ready as a ring broken before the wait
     * is ({@link #armInterrupts}), whatever the layout; the receive or send that follows says why.
     */
    private static boolean usedOrBroken(DriverRing ring) {
        try {
            return ring.usedPending(1) > 0;
        } catch (VirtqueueException e) {
            return true;
        }
    }

    /**
     * The wait of a disabled pair, which delivers nothing: frames left in its ring (used just before the backend
     * stopped it, or by a backend that goes on using a disabled ring) must not end it, or every wait would return at
     * once and a thread waiting on its pair would spin. It ends at {@code deadline}, at close, or once the pair is
     * enabled again ({@link #enabledAgain}; then true, and the caller waits on as for an enabled pair).
     */
    private boolean awaitEnabled(long deadline) {
        while (deadline - System.nanoTime() > 0 && !Thread.currentThread().isInterrupted()) {
            if (enabled) {
                return true;
            }
            int n = awaitUntil(deadline);
            if (closing(n)) {
                return false;
            }
            if (hungUp(n)) {
                throw backendGone();
            }
        }
        return enabled;
    }

    /**
     * One epoll wait, until {@code deadline} (System.nanoTime) at most, rounded up to a whole millisecond (a wait of
     * 0 ms returns at once, and a loop of those until the deadline would spin), and {@link #INTERRUPT_CHECK_MS} at
     * most (Thread.interrupt does not end epoll_wait); how many events came, 0 for none (the slice's end, the
     * deadline, a signal).
     */
    private int awaitUntil(long deadline) {
        long left = deadline - System.nanoTime();
        return waiter.await((int) Math.min(INTERRUPT_CHECK_MS, Math.max(1, (left + 999_999) / 1_000_000L)));
    }

    /** How long one epoll wait of {@link #awaitReady} lasts at most: how soon it sees its thread interrupted. */
    static final int INTERRUPT_CHECK_MS = 50;

    /** What each descriptor of the wait's epoll stands for, in its events' data. */
    private static final long EVENT_CALL = 0, EVENT_WAKE = 1, EVENT_HANGUP = 2, EVENT_TX_CALL = 3;

    /** Whether the {@code n} events of the last wait include one of {@code token}. */
    private boolean has(int n, long token) {
        for (int i = 0; i < n; i++) {
            if (waiter.data(i) == token) {
                return true;
            }
        }
        return false;
    }

    /** Whether the {@code n} events of the last wait include the backend's hang-up. */
    private boolean hungUp(int n) {
        return has(n, EVENT_HANGUP);
    }

    /**
     * Whether the {@code n} events of the last wait include close's wake-up. The same eventfd also says that the pair
     * was enabled again ({@link #enabledAgain}): that one is taken here, so that the next wait sleeps (close sets
     * {@link #closed} before it signals, so a close is never taken for it).
     */
    private boolean closing(int n) {
        if (!has(n, EVENT_WAKE)) {
            return false;
        }
        if (closed) {
            return true;
        }
        wake.drain();
        return closed;
    }

    public QueueCounters.Snapshot rxCounters() {
        return rxCounters.snapshot();
    }

    public QueueCounters.Snapshot txCounters() {
        return txCounters.snapshot();
    }

    /** Closes the pair's descriptors; only once its thread is out ({@link #awaitLeft}) or never started. */
    void close() {
        for (Epoll e : waiters) {
            if (e != null) {
                e.close();
            }
        }
        rxKick.close();
        txKick.close();
        rxCall.close();
        txCall.close();
        wake.close();
    }
}
