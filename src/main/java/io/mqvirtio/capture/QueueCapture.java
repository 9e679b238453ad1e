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
import java.util.Set;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

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
    private final long wallAtStart;
    private final long nanoAtStart;
    private final AtomicLong captured = new AtomicLong();
    private final AtomicLong dropped = new AtomicLong();
    private final AtomicLong queuedBytes = new AtomicLong(); // added by the worker, taken off by the writer
    private volatile boolean full;   // the file reached maxBytes: the worker stops copying
    private volatile boolean closed;
    private long written;            // writer thread only

    /**
     * Creates (or truncates) {@code file} and writes its header; {@code name} names the interface in it (Wireshark
     * shows it), {@code description} says what it is.
     */
    public QueueCapture(Path file, String name, String description, int snaplen, long maxBytes) throws IOException {
        this(file, name, description, snaplen, maxBytes, Thread.ofVirtual().name("capture-" + name).factory());
    }

    /** As above, with the writer a thread of {@code writers} (a test's, to hold the writer back as a slow disk would). */
    QueueCapture(Path file, String name, String description, int snaplen, long maxBytes, ThreadFactory writers)
            throws IOException {
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
        this.wallAtStart = System.currentTimeMillis() * 1_000_000L;
        this.nanoAtStart = System.nanoTime();
        this.writer = writers.newThread(this::drain);
        writer.start();
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
        if (full || closed || queuedBytes.get() + Math.min(len, snaplen) > QUEUE_BYTES) {
            dropped.incrementAndGet();
            return false;
        }
        return true;
    }

    private void offer(int direction, int original, byte[] data) {
        long ts = wallAtStart + (System.nanoTime() - nanoAtStart);
        queuedBytes.addAndGet(data.length);
        if (!queue.offer(new Frame(ts, direction, original, data))) {
            queuedBytes.addAndGet(-data.length);
            dropped.incrementAndGet();
        }
    }

    private void drain() {
        ByteBuffer buf = ByteBuffer.allocate(1 << 20).order(ByteOrder.LITTLE_ENDIAN);
        try {
            while (true) {
                Frame f = queue.poll();
                if (f == null) {
                    flush(buf); // idle: what is captured is in the file (a live tshark -r sees it)
                    f = queue.poll(200, TimeUnit.MILLISECONDS);
                    if (f == null) {
                        continue;
                    }
                }
                if (f == END) {
                    break;
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
                if (buf.remaining() < size) {
                    flush(buf);
                }
                Pcapng.enhancedPacket(buf, f.timestampNanos(), f.data(), f.data().length, f.original(), f.direction());
                captured.incrementAndGet();
            }
            flush(buf);
        } catch (IOException e) {
            full = true;
            // what is queued will never be written: let it go now, not when the capture is closed
            for (Frame f; (f = queue.poll()) != null; ) {
                if (f != END) {
                    queuedBytes.addAndGet(-f.data().length);
                    dropped.incrementAndGet();
                }
            }
            LOG.log(Level.WARNING, "capture {0}: cannot write, capture stopped: {1}", file, e.toString());
        } catch (InterruptedException e) {
            // close() gave up waiting
        }
    }

    private void flush(ByteBuffer buf) throws IOException {
        if (buf.position() == 0) {
            return;
        }
        buf.flip();
        written += write(buf);
        buf.clear();
    }

    private long write(ByteBuffer b) throws IOException {
        long n = 0;
        while (b.hasRemaining()) {
            n += out.write(b);
        }
        return n;
    }

    /** Writes what is queued, closes the file (waits at most 5 s for the writer). */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        try {
            if (!queue.offer(END, 1, TimeUnit.SECONDS)) {
                writer.interrupt(); // a writer that stopped (a write failed) leaves the queue full
            }
            writer.join(5000);
            if (writer.isAlive()) {
                writer.interrupt();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            writer.interrupt();
        }
        LOG.log(dropped.get() > 0 ? Level.WARNING : Level.INFO, "capture {0}: {1} frames{2}", file, captured.get(),
                dropped.get() > 0 ? ", " + dropped.get() + " left out (the writer fell behind, or the file was full)" : "");
        try {
            out.close();
        } catch (IOException e) {
            LOG.log(Level.WARNING, "capture {0}: closing: {1}", file, e.toString());
        }
    }
}
