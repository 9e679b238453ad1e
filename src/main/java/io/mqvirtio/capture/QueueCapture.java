package io.mqvirtio.capture;

import io.mqvirtio.linux.IoVec;
import io.mqvirtio.virtio.DescriptorChain;
import java.io.IOException;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Instant;
import java.util.Set;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.LongSupplier;

/**
 * One queue pair's capture: the frames its worker moves, in a pcapng file ({@link Pcapng}), both directions in one
 * file told apart by each packet's direction flag (outbound: the guest sent it, virtio TX; inbound: the guest received
 * it, virtio RX). The virtio-net header is not part of the frame.
 *
 * <p>The worker only copies a frame's first {@code snaplen} bytes into an array and offers it to a bounded queue
 * ({@link #QUEUE} frames and {@link #QUEUE_BYTES} bytes); a thread of the capture's own writes the file. A full queue
 * (a disk slower than the traffic, or one that stopped) drops frames from the capture, never from the data path, and
 * counts them; a file that reached
 * {@code maxBytes} stops growing (a guest cannot fill the host's disk). The file is made new, 0600 (what had its name
 * is removed first; a link is never followed, a FIFO never opened): a capture holds a VM's traffic.
 *
 * <p>The writer is a platform thread, and the only thread that writes or closes the file: a write or a close(2) on a
 * file system that stopped answering (a dead NFS server, a hung FUSE daemon) blocks until it answers, and a
 * {@code FileChannel} closed or interrupted from another thread waits for the threads in its writes. Closing asks
 * the writer to finish and waits for it until a deadline ({@link #closeAll}: every capture of the process under one);
 * a writer that has not finished by then is left behind, its frames counted as left out, and closes the file when
 * its write returns. Whatever is lost is logged once per capture: the first frame the queue had no room for, a write
 * that failed, and the totals when it closes.
 */
public final class QueueCapture implements AutoCloseable {
    private static final Logger LOG = System.getLogger(QueueCapture.class.getName());
    /** Frames waiting for the writer; more are dropped from the capture (and counted). */
    static final int QUEUE = 4096;
    /**
     * Bytes of frames waiting for the writer; more are dropped from the capture (and counted). The frame count alone
     * let the queue hold 4096 frames of up to the snap length each: with the guest's 64 KiB TSO frames and a disk
     * that fell behind or stopped, 256 MiB per queue pair (1 GiB at the largest snap length), enough for a VM with
     * a few pairs to exhaust the heap of the daemon that serves every VM. 4096 frames of 1500 bytes still fit.
     */
    static final long QUEUE_BYTES = 8 << 20;
    /**
     * How long closing waits, for all the captures closed together, for their writers to put what is queued in the
     * files and close them (serve's stop waits this long at most for every capture of every VM).
     */
    public static final java.time.Duration CLOSE_WAIT = java.time.Duration.ofSeconds(5);
    /** What {@code --capture-snaplen} defaults to (tcpdump's): every frame whole. */
    public static final int DEFAULT_SNAPLEN = Pcapng.MAX_SNAPLEN;

    private record Frame(long timestampNanos, int direction, int original, byte[] data) {}

    private static final Frame END = new Frame(0, 0, 0, new byte[0]);

    private final Path file;
    private final int snaplen;
    private final long maxBytes;
    private final FileChannel out;
    private final ArrayBlockingQueue<Frame> queue = new ArrayBlockingQueue<>(QUEUE);
    private final Thread writer;
    /**
     * The time of day, read for each frame: the time of day at the start plus the monotonic time since drifted for good
     * at the host clock's first step (a time sync after boot, a clock set by hand) and by every suspend (which the
     * monotonic clock does not count), for the rest of a capture that lasts as long as serve.
     */
    private final LongSupplier wallNanos;
    private final AtomicLong captured = new AtomicLong();
    private final AtomicLong dropped = new AtomicLong();
    private final AtomicLong queuedBytes = new AtomicLong(); // added by the worker, taken off by the writer
    private volatile boolean full;   // the file reached maxBytes, or a write failed: the worker stops copying
    private volatile boolean closed; // no more frames: the writer writes what is queued, closes the file and ends
    private final java.util.concurrent.atomic.AtomicBoolean behind = new java.util.concurrent.atomic.AtomicBoolean();
    private boolean abandoned;       // (this) closing gave up on the writer: what it has not written is left out
    private int unflushed;           // (this) frames the writer holds, in its buffer or about to be, not in the file
    private boolean logged;          // (this) the capture's closing line is out
    private long written;            // writer thread only

    /**
     * Creates (or truncates) {@code file} and writes its header; {@code name} names the interface in it (Wireshark
     * shows it), {@code description} says what it is.
     */
    public QueueCapture(Path file, String name, String description, int snaplen, long maxBytes) throws IOException {
        // A platform thread, not a virtual one: a virtual thread in a file write holds its carrier for as long as the
        // write takes (the JDK adds a carrier meanwhile, up to 256): writers stuck on a dead disk would take every
        // carrier, and every virtual thread of the process would stop. A daemon: one stuck in a write never holds
        // the process's exit.
        this(file, name, description, snaplen, maxBytes, Thread.ofPlatform().daemon().name("capture-" + name).factory());
    }

    /** As above, with the writer a thread of {@code writers} (a test's, to hold the writer back as a slow disk would). */
    QueueCapture(Path file, String name, String description, int snaplen, long maxBytes, ThreadFactory writers)
            throws IOException {
        this(file, name, description, snaplen, maxBytes, writers, QueueCapture::wallClockNanos);
    }

    /** As above, with the wall clock (nanoseconds since the epoch) a test's, to step it as a host's clock may step. */
    QueueCapture(Path file, String name, String description, int snaplen, long maxBytes, ThreadFactory writers,
                 LongSupplier wallNanos) throws IOException {
        if (snaplen < 64 || snaplen > Pcapng.MAX_SNAPLEN) {
            throw new IllegalArgumentException("snap length " + snaplen + " is not in 64.." + Pcapng.MAX_SNAPLEN);
        }
        this.file = file;
        this.snaplen = snaplen;
        this.maxBytes = maxBytes;
        // A new file, made here: whatever had the name goes first (a link, a FIFO that would block the open, an old
        // capture), and O_EXCL fails rather than open something put back in between.
        Files.deleteIfExists(file);
        this.out = FileChannel.open(file, Set.of(StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE,
                LinkOption.NOFOLLOW_LINKS), PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
        try {
            written = write(ByteBuffer.wrap(Pcapng.sectionHeader("mqvirtio")));
            written += write(ByteBuffer.wrap(Pcapng.interfaceDescription(name, description, snaplen)));
        } catch (IOException | RuntimeException e) {
            out.close();
            throw e;
        }
        this.wallNanos = wallNanos;
        this.writer = writers.newThread(this::drain);
        writer.start();
    }

    /** The time of day, in nanoseconds since the epoch (CLOCK_REALTIME). */
    static long wallClockNanos() {
        Instant now = Instant.now();
        return now.getEpochSecond() * 1_000_000_000L + now.getNano();
    }

    public Path file() {
        return file;
    }

    /** Frames in the file so far. */
    public long captured() {
        return captured.get();
    }

    /** Frames left out: the writer fell behind, or the file was full. */
    public long dropped() {
        return dropped.get();
    }

    /** Worker: a frame the guest sent, gathered in {@code frame} (guest buffers) after the {@code header} bytes. */
    public void sent(IoVec frame, int header) {
        long len = frame.totalBytes() - header;
        if (len <= 0 || !room(len)) {
            return;
        }
        byte[] data = new byte[(int) Math.min(len, snaplen)];
        frame.copyTo(header, MemorySegment.ofArray(data), 0, data.length);
        offer(Pcapng.OUTBOUND, (int) Math.min(len, Integer.MAX_VALUE), data);
    }

    /**
     * Worker: a frame of {@code len} bytes (header included) written to the guest in the writable buffers of
     * {@code chains[0..k-1]}, in order, from {@code header} on.
     */
    public void received(DescriptorChain[] chains, int k, long len, int header) {
        long frame = len - header;
        if (frame <= 0 || !room(frame)) {
            return;
        }
        byte[] data = new byte[(int) Math.min(frame, snaplen)];
        MemorySegment to = MemorySegment.ofArray(data);
        long at = 0;
        long skip = header;
        for (int i = 0; i < k && at < data.length; i++) {
            long inChain = chains[i].writableBytes();
            if (skip >= inChain) {
                skip -= inChain;
                continue;
            }
            long n = Math.min(inChain - skip, data.length - at);
            chains[i].readWritten(skip, to.asSlice(at, n));
            at += n;
            skip = 0;
        }
        offer(Pcapng.INBOUND, (int) Math.min(frame, Integer.MAX_VALUE), data);
    }

    /** Worker: a frame of {@code len} bytes (header included) written to the guest in the one buffer {@code frame}. */
    public void received(IoVec frame, long len, int header) {
        long n = len - header;
        if (n <= 0 || !room(n)) {
            return;
        }
        byte[] data = new byte[(int) Math.min(n, snaplen)];
        frame.copyTo(header, MemorySegment.ofArray(data), 0, data.length);
        offer(Pcapng.INBOUND, (int) Math.min(n, Integer.MAX_VALUE), data);
    }

    /**
     * Whether a frame of {@code len} bytes may be copied: the file has room and the queue has room for its first
     * snap length bytes (checked before the copy, so that a frame left out costs no array).
     */
    private boolean room(long len) {
        if (full || closed) {
            dropped.incrementAndGet();
            return false;
        }
        if (queuedBytes.get() + Math.min(len, snaplen) > QUEUE_BYTES) {
            fellBehind();
            return false;
        }
        return true;
    }

    private void offer(int direction, int original, byte[] data) {
        long ts = wallNanos.getAsLong();
        queuedBytes.addAndGet(data.length);
        if (!queue.offer(new Frame(ts, direction, original, data))) {
            queuedBytes.addAndGet(-data.length);
            fellBehind();
        }
    }

    /** A frame the queue has no room for: counted; the first one of the capture is also a line (then only counted). */
    private void fellBehind() {
        dropped.incrementAndGet();
        if (!behind.get() && behind.compareAndSet(false, true)) {
            LOG.log(Level.WARNING, "capture {0}: its disk does not keep up (slow, or not answering): frames are left "
                    + "out of the capture from now on, counted (the total when it closes); the traffic is not "
                    + "affected", file);
        }
    }

    private void drain() {
        ByteBuffer buf = ByteBuffer.allocate(1 << 20).order(ByteOrder.LITTLE_ENDIAN);
        try {
            while (!isAbandoned()) {
                Frame f = queue.poll();
                if (f == null) {
                    flush(buf, 0); // idle: what is captured is in the file (a live tshark -r sees it)
                    if (closed) {
                        break; // nothing more comes (the worker no longer offers; END woke us up)
                    }
                    f = queue.poll(200, TimeUnit.MILLISECONDS);
                    if (f == null) {
                        continue;
                    }
                }
                if (f == END) {
                    continue; // closed: the queue empties, then the loop ends
                }
                queuedBytes.addAndGet(-f.data().length);
                int size = Pcapng.packetBlockSize(f.data().length);
                if (written + buf.position() + size > maxBytes) {
                    if (!full) {
                        full = true;
                        LOG.log(Level.WARNING, "capture {0}: {1} bytes reached (the limit): later frames are not "
                                + "captured", file, maxBytes);
                    }
                    dropped.incrementAndGet();
                    continue;
                }
                synchronized (this) {
                    unflushed++; // f: in the file once its buffer is written, left out if that never happens
                }
                if (buf.remaining() < size) {
                    flush(buf, 1); // all but f, which is not in the buffer yet
                }
                Pcapng.enhancedPacket(buf, f.timestampNanos(), f.data(), f.data().length, f.original(), f.direction());
            }
        } catch (IOException e) {
            full = true;
            LOG.log(Level.WARNING, "capture {0}: cannot write, capture stopped (later frames are left out, counted): "
                    + "{1}", file, e.toString());
        } catch (InterruptedException e) {
            // not expected: closing asks through the queue, never by interrupting (see close)
            full = true;
        } finally {
            full = true;
            synchronized (this) {
                dropped.addAndGet(unflushed); // not in the file: a write failed, or closing gave up on us
                unflushed = 0;
            }
            // what is queued will never be written: let it go now, not when the capture is closed
            leaveOutQueued();
            try {
                out.close(); // here, not in close(): close(2) on a file system that does not answer blocks too
            } catch (IOException e) {
                LOG.log(Level.WARNING, "capture {0}: closing: {1}", file, e.toString());
            }
        }
    }

    private synchronized boolean isAbandoned() {
        return abandoned;
    }

    /** Counts what is queued as left out and lets it go. */
    private void leaveOutQueued() {
        for (Frame f; (f = queue.poll()) != null; ) {
            if (f != END) {
                queuedBytes.addAndGet(-f.data().length);
                dropped.incrementAndGet();
            }
        }
    }

    /** Writes the buffer: the frames counted as not yet in the file are, but for the last {@code notInIt}. */
    private void flush(ByteBuffer buf, int notInIt) throws IOException {
        if (buf.position() == 0) {
            return;
        }
        buf.flip();
        written += write(buf); // may block for as long as the file system takes
        buf.clear();
        synchronized (this) {
            if (!abandoned) { // abandoned: closing counted these as left out already
                captured.addAndGet(unflushed - notInIt);
                unflushed = notInIt;
            }
        }
    }

    private long write(ByteBuffer b) throws IOException {
        long n = 0;
        while (b.hasRemaining()) {
            n += out.write(b);
        }
        return n;
    }

    /**
     * Stops taking frames and asks the writer to write what is queued and close the file; returns at once (see
     * {@link #closeAll}).
     */
    public void finish() {
        if (closed) {
            return;
        }
        closed = true;
        // wakes a writer waiting for frames; a full queue has a writer busy with it, which sees it closed once empty
        queue.offer(END);
    }

    /**
     * Waits until {@code deadline} ({@link System#nanoTime}) at most for the writer to finish ({@link #closeAll} has
     * asked it to); a writer that has not finished by then is left behind: what it has not written is counted as left
     * out, and it closes the file when its write returns. Logs the capture's line (once). Whether the writer finished
     * in time.
     */
    private boolean awaitClosed(long deadline) {
        boolean done;
        try {
            done = writer.join(java.time.Duration.ofNanos(Math.max(0, deadline - System.nanoTime())));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            done = !writer.isAlive();
        }
        long leftBehind = 0;
        synchronized (this) {
            if (!done && !abandoned) {
                abandoned = true;
                leftBehind = unflushed;
                dropped.addAndGet(unflushed);
                unflushed = 0;
            }
            if (logged) {
                return done;
            }
            logged = true;
        }
        // a writer that failed, or was left behind, writes nothing more; and a frame the worker offered as the writer
        // stopped on a failure came after the writer let its queue go
        leaveOutQueued();
        long d = dropped.get();
        LOG.log(d > 0 || !done ? Level.WARNING : Level.INFO, "capture {0}: {1} frames{2}{3}", file, captured.get(),
                d > 0 ? ", " + d + " left out (the disk fell behind or failed, or the file was full)" : "",
                done ? "" : "; its file system did not answer within the wait for closing (" + leftBehind
                        + " frames being written are among those left out): the file closes when it answers");
        return done;
    }

    /**
     * Closes {@code captures} together: each is asked to finish at once, then all are waited for until one deadline,
     * {@code wait} from now (the whole wait is bounded, not each capture's).
     */
    public static void closeAll(java.util.Collection<QueueCapture> captures, java.time.Duration wait) {
        long deadline = System.nanoTime() + wait.toNanos();
        captures.forEach(QueueCapture::finish);
        captures.forEach(c -> c.awaitClosed(deadline));
    }

    /** Writes what is queued and closes the file; waits {@link #CLOSE_WAIT} at most (see {@link #closeAll}). */
    @Override
    public void close() {
        closeAll(java.util.List.of(this), CLOSE_WAIT);
    }
}
