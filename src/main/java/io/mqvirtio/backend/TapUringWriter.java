package io.mqvirtio.backend;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.IoUring;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.virtio.Experiment;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.Arrays;

/**
 * One TAP queue's TX writes batched through io_uring: each frame (header and frame) is copied into a slot of one
 * registered buffer when the worker takes it from the guest, and a burst's frames go to the kernel as
 * {@code IORING_OP_WRITE_FIXED} entries on the registered queue fd, with one {@code io_uring_enter} for all of them.
 * A TAP write completes inline, in the submitting thread: no io_uring worker thread is involved ({@link #probe}
 * checks that before a backend uses it).
 *
 * <p>The copy into the slot is what makes the registered buffer possible without registering (and pinning) all of
 * a guest's memory, whose map the frontend may change at any time; it also frees the guest's buffer at once, so the
 * chain is completed as it is now. Frames larger than a slot are not taken: the worker sends them with {@code
 * writev} after flushing what is queued, so their order holds.
 *
 * <p>Where the TAP's send buffer is limited, a burst's writes are linked, so that none overtakes another: the frames
 * from the first the TAP has no room for on stay in their slots, in order, for the next {@link #flush} (see there).
 *
 * <p>Owned by the queue pair's worker thread: the ring is made by the first {@link #queue} (io_uring's
 * SINGLE_ISSUER ties it to the thread that made it) and closed by the backend after the workers stopped. Anything
 * unexpected from io_uring (a failed setup or registration, e.g. RLIMIT_MEMLOCK; a failed enter; a completion that
 * is not ours) turns it off for good: {@link #failure()} says why, and the port writes with writev from then on.
 * A set-up that fails for want of a file descriptor (EMFILE, ENFILE: the process or the system at its limit, a state
 * that passes) is tried again each {@link #RETRY_NANOS} instead, writev meanwhile: {@link #waiting()} says why.
 */
final class TapUringWriter implements AutoCloseable {
    /** Frames per submission: the worker's read-ahead batch. */
    static final int SLOTS = 32;
    /** A slot: header and an MTU-sized frame (12 + 1514, with room for a VLAN tag and more). */
    static final int SLOT_BYTES = 2048;
    private static final int EBADFD = 77; // <asm-generic/errno.h>: a TAP queue whose device is gone
    /** How long after a set-up that found no file descriptor free the next one is tried. */
    static final long RETRY_NANOS = 1_000_000_000L;

    private final Tap queue;
    private IoUring ring;
    private MemorySegment slots;
    private final int[] lens = new int[SLOTS];
    private int count;
    /** Frames held from a flush that found the TAP full: slots first..count-1 (none while first == count). */
    private int first;
    private final long[] data = new long[SLOTS];
    private final int[] cqRes = new int[SLOTS];
    /** Each slot's last write's result, and whether its completion came. */
    private final int[] res = new int[SLOTS];
    private final boolean[] seen = new boolean[SLOTS];
    private volatile String failure;
    /** Why the last set-up failed for want of a descriptor (tried again at {@link #retryAt}), or null. */
    private volatile String waiting;
    private long retryAt; // worker thread only
    /**
     * Whether a batch's writes are linked (worker thread only): from the set-up on where the TAP's send buffer is
     * limited (only then can a write find no room), and for good once a write found none. See {@link #flush}.
     */
    private boolean linked;

    TapUringWriter(Tap queue) {
        this.queue = queue;
    }

    /**
     * Why TAP writes through io_uring cannot be used here, or null: io_uring is there and a write to {@code queue}
     * completes inside {@code io_uring_enter} (the kernel did not hand it to a worker thread). The probe writes one
     * byte, less than the virtio-net header, so the TAP refuses it (EINVAL, or EBADFD on a detached queue) and
     * nothing reaches the host.
     */
    static String probe(Tap queue) {
        String why = IoUring.unavailable();
        if (why != null) {
            return why;
        }
        try (IoUring r = IoUring.create(2); Arena a = Arena.ofConfined()) {
            MemorySegment b = a.allocate(4096, 4096);
            r.registerFiles(queue.fd());
            r.registerBuffers(b);
            r.prepare(IoUring.OP_WRITE_FIXED, IoUring.SQE_FIXED_FILE, 0, b.address(), 1, -1, 0, IoUring.RWF_NOWAIT, 7);
            r.submit(0);
            long[] d = new long[2];
            int[] s = new int[2];
            if (r.reap(d, s, 2) != 1) {
                return "a TAP write did not complete inside io_uring_enter (the kernel would use worker threads)";
            }
            // The TAP's own refusal, not io_uring's: EOPNOTSUPP (a TAP without RWF_NOWAIT) or EAGAIN would be every
            // write's answer
            if (d[0] != 7 || (s[0] != -ErrnoException.EINVAL && s[0] != -ErrnoException.EIO && s[0] != -EBADFD)) {
                return "a TAP write of one byte through io_uring answered " + s[0] + " (expected the TAP's refusal)";
            }
            return null;
        } catch (RuntimeException e) {
            return e.getMessage();
        }
    }

    /** Why this writer is off (then the port writes with writev), or null while it is in use. */
    String failure() {
        return failure;
    }

    /**
     * Why this writer waits to be set up (its last try found no file descriptor free; the port writes with writev
     * meanwhile), or null: set up, or not tried yet. Any thread.
     */
    String waiting() {
        return waiting;
    }

    /** Whether {@link #queue} may take frames now: not off, and not waiting for its next try at a set-up. */
    boolean usable() {
        return failure == null && (waiting == null || System.nanoTime() - retryAt >= 0);
    }

    /** Frames held for the next {@link #flush}: queued since the last, and those it kept. */
    int queued() {
        return count - first;
    }

    /**
     * Copies {@code frame} (header then frame) into the next slot; false when it is not taken: larger than a slot,
     * the slots full (flush first), or the writer off.
     */
    boolean queue(IoVec frame) {
        long total = frame.totalBytes();
        if (total > SLOT_BYTES || count == SLOTS || failure != null || (ring == null && !open())) {
            return false;
        }
        frame.copyTo(slots, (long) count * SLOT_BYTES, total);
        lens[count++] = (int) total;
        return true;
    }

    /** {@link #queue} of a frame that lies in one buffer, {@code total} bytes at this process's {@code address}. */
    boolean queue(long address, long total) {
        if (total > SLOT_BYTES || count == SLOTS || failure != null || (ring == null && !open())) {
            return false;
        }
        IoVec.copy(address, slots, (long) count * SLOT_BYTES, total);
        lens[count++] = (int) total;
        return true;
    }

    /**
     * The writer's ring, with DEFER_TASKRUN where the kernel has it (6.1): a linked write's start after the one before
     * it runs from the ring's own list in {@code io_uring_enter}'s wait, not as the thread's task work (the links cost
     * the worker about a third of its CPU per frame without it, a tenth with it; docs/performance.md).
     */
    private static IoUring createRing() {
        try {
            return IoUring.create(SLOTS, true);
        } catch (ErrnoException e) {
            if (e.errno() != ErrnoException.EINVAL) {
                throw e;
            }
            return IoUring.create(SLOTS, false); // a kernel before 6.1
        }
    }

    private boolean open() {
        if (waiting != null && System.nanoTime() - retryAt < 0) {
            return false;
        }
        IoUring r = null;
        try {
            r = createRing();
            MemorySegment s = slots != null ? slots : Arena.ofAuto().allocate((long) SLOTS * SLOT_BYTES, 4096);
            slots = s;
            r.registerFiles(queue.fd());
            r.registerBuffers(s);
            ring = r;
            linked |= sendBufferLimited();
            waiting = null;
            return true;
        } catch (RuntimeException e) {
            if (r != null) {
                r.close();
            }
            if (e instanceof ErrnoException x
                    && (x.errno() == ErrnoException.EMFILE || x.errno() == ErrnoException.ENFILE)) {
                // io_uring_setup needs a descriptor, and none is free now: a state that passes (another VM's session
                // ending, the limit raised), unlike a kernel or a limit that refuses io_uring
                retryAt = System.nanoTime() + RETRY_NANOS;
                waiting = "io_uring set-up failed: " + e.getMessage();
                return false;
            }
            failure = "io_uring set-up failed: " + e.getMessage();
            return false;
        }
    }

    /**
     * Whether a write to this queue can find no room: its send buffer is not the TAP's own (Integer.MAX_VALUE), or
     * cannot be read (then as if limited). Read once, at the set-up (the ioctl takes the kernel's rtnl lock).
     */
    private boolean sendBufferLimited() {
        try {
            return queue.sendBuffer() != Integer.MAX_VALUE;
        } catch (RuntimeException e) {
            return true;
        }
    }

    /**
     * Writes the queued frames in order, one submission for all, and says what became of them: {@code results[i]} is
     * the i-th frame's (bytes written, or -errno: EIO for a TAP that is down, EINVAL for a bad header, EBADFD for a
     * detached queue). Returns how many frames have their result; the rest, from the first the TAP had no room for
     * (EAGAIN: a send buffer the host limited), stay queued, in order, first in line for the next flush, which the
     * caller makes when the TAP has room again (its EPOLLOUT edge). If io_uring itself fails, every frame without a
     * result gets -EIO and the writer turns itself off.
     *
     * <p>Where a write can find no room (the TAP's send buffer limited), the writes are linked (IOSQE_IO_LINK): each
     * starts only after the one before it completed, and the first that fails cancels the rest (-ECANCELED, nothing
     * written; a short write fails a link too, but a TAP write is whole or refused). Unlinked, a write after one the
     * TAP had no room for could find room (the host frees it as it takes frames) and go out ahead of it. After a
     * refusal other than EAGAIN (that frame is dropped, the caller counts it) the cancelled rest is submitted again: a
     * batch takes at most one enter per refused frame, plus one. Links cost the worker about a tenth of its CPU per
     * frame (docs/performance.md, {@code --ab tap-uring-linked}), so a TAP whose send buffer is its own (unlimited:
     * a write never finds it full) is written unlinked; if a host limits it later, the first write that finds no room
     * is answered EAGAIN (a drop, as the frames after it in that batch may be out already) and from then on the
     * queue's writes are linked and held.
     */
    int flush(long[] results) {
        int n = count - first;
        if (n == 0) {
            return 0;
        }
        boolean linked = this.linked || Experiment.TAP_URING_LINKED.on();
        int settled = 0;
        try {
            while (first < count) {
                int from = first;
                submit(from, count, linked);
                for (int j = from; j < count; j++) {
                    int r = res[j];
                    if (linked && r == -ErrnoException.ECANCELED) {
                        break; // a write before it failed: submitted again
                    }
                    if (linked && r == -ErrnoException.EAGAIN) {
                        return settled; // held: j and what follows it (cancelled) go with the next flush
                    }
                    if (r == -ErrnoException.EAGAIN) {
                        this.linked = true; // a host limited the send buffer after the set-up: held from now on
                    }
                    results[settled++] = r; // unlinked, an EAGAIN is a drop (what followed may be out already)
                    first = j + 1;
                }
                if (first == from) {
                    throw new IllegalStateException("io_uring cancelled the first write of a link: " + res[from]);
                }
            }
            first = 0;
            count = 0;
            return n;
        } catch (RuntimeException e) {
            failure = "io_uring failed: " + e.getMessage();
            for (int j = first; j < count; j++) {
                // a write seen to complete counts as it did; one not known to be written is counted as failed
                results[settled++] = seen[j] && res[j] != -ErrnoException.ECANCELED ? res[j] : -ErrnoException.EIO;
            }
            first = 0;
            count = 0;
            return n;
        }
    }

    /** Discards the frames a {@link #flush} kept (the TAP had no room for them); the caller counts them. */
    void discard() {
        first = 0;
        count = 0;
    }

    /**
     * Submits slots {@code from..to-1} with one {@code io_uring_enter} and reaps their completions into {@link #res},
     * indexed by slot.
     */
    private void submit(int from, int to, boolean linked) {
        int n = to - from;
        Arrays.fill(seen, from, to, false);
        long base = slots.address();
        for (int i = from; i < to; i++) {
            // RWF_NOWAIT: a TAP with no room answers EAGAIN. Without it io_uring polls the TAP and retries when it has
            // room, and the completion loop below would wait for that in io_uring_enter, for as long as the host holds
            // what fills the TAP's send buffer (a command unanswered for 10 s: the device is dead).
            byte flags = linked && i < to - 1 ? (byte) (IoUring.SQE_FIXED_FILE | IoUring.SQE_IO_LINK)
                    : IoUring.SQE_FIXED_FILE;
            if (!ring.prepare(IoUring.OP_WRITE_FIXED, flags, 0, base + (long) i * SLOT_BYTES, lens[i], -1, 0,
                    IoUring.RWF_NOWAIT, i)) {
                throw new IllegalStateException("io_uring submission ring full with " + (i - from) + " of " + n
                        + " entries");
            }
        }
        int taken = ring.submit(n);
        if (taken != n) {
            throw new IllegalStateException("io_uring_enter took " + taken + " of " + n + " writes");
        }
        int got = 0;
        int waits = 0;
        while (got < n) {
            int k = ring.reap(data, cqRes, n - got);
            for (int j = 0; j < k; j++) {
                long d = data[j];
                if (d < from || d >= to || seen[(int) d]) {
                    throw new IllegalStateException("io_uring completed an entry that is not in flight: " + d);
                }
                seen[(int) d] = true;
                res[(int) d] = cqRes[j];
            }
            got += k;
            if (got < n) {
                if (++waits > n) {
                    throw new IllegalStateException("io_uring completions missing: " + got + " of " + n);
                }
                // wait for the rest: a linked write starts in task work this thread runs before io_uring_enter
                // returns, and completes inline there (not reached)
                ring.submit(n - got);
            }
        }
    }

    @Override
    public void close() {
        if (ring != null) {
            ring.close(); // drops the ring's reference to the queue's file: a TAP we made can go with its last fd
            ring = null;
        }
    }
}
