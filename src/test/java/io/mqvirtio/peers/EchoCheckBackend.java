package io.mqvirtio.peers;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.Port;
import io.mqvirtio.net.VirtioNet;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.Queue;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A backend for tests against a frontend that echoes (testpmd forwarding {@code io} or {@code macswap} on a port
 * looped to itself): each pair hands the worker the frames a test {@link Pair#offer offers} (its port's descriptor
 * an eventfd, signalled per frame) and checks every frame that comes back on the same pair: a sequence number (one
 * per pair, in the order offered), the pair's number, a length and bytes that follow from the sequence number, the
 * MAC addresses as sent or swapped. It counts what comes back in order, what was skipped (lost on the way), what came
 * back twice or out of order, and what was malformed, with the first few problems in words.
 */
final class EchoCheckBackend implements PacketBackend {
    static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    static final int MIN_FRAME = 60;
    private static final byte[] A = {2, 0, 0, 0, 0, 1};
    private static final byte[] B = {2, 0, 0, 0, 0, 2};

    final Pair[] pairs;
    final boolean macswap;
    final List<String> problems = new ArrayList<>();

    EchoCheckBackend(int pairs, boolean macswap) {
        this.macswap = macswap;
        this.pairs = new Pair[pairs];
        for (int i = 0; i < pairs; i++) {
            this.pairs[i] = new Pair(i);
        }
    }

    /** The frame (virtio-net header, then Ethernet) of sequence number {@code seq} on {@code pair}, {@code len} long. */
    static byte[] frame(int pair, int seq, int len) {
        byte[] f = new byte[VirtioNet.HDR_SIZE + len];
        int e = VirtioNet.HDR_SIZE;
        System.arraycopy(A, 0, f, e, 6);
        System.arraycopy(B, 0, f, e + 6, 6);
        f[e + 12] = 0x08; // IPv4, so that nothing on the way takes it for a control frame
        f[e + 13] = 0x00;
        f[e + 14] = 0x45;
        MemorySegment s = MemorySegment.ofArray(f);
        s.set(LE32, e + 16, seq);
        s.set(LE32, e + 20, pair);
        s.set(LE32, e + 24, len);
        for (int i = e + 28; i < f.length; i++) {
            f[i] = (byte) (seq * 31 + i * 7);
        }
        return f;
    }

    synchronized void problem(String p) {
        if (problems.size() < 20) {
            problems.add(p);
        }
    }

    long total(java.util.function.ToLongFunction<Pair> f) {
        long t = 0;
        for (Pair p : pairs) {
            t += f.applyAsLong(p);
        }
        return t;
    }

    final class Pair {
        final int index;
        final EventFd ready = EventFd.create();
        final Queue<byte[]> out = new ConcurrentLinkedQueue<>();
        final AtomicLong offered = new AtomicLong();
        final AtomicLong taken = new AtomicLong();
        final AtomicLong back = new AtomicLong();
        final AtomicLong skipped = new AtomicLong();
        final AtomicLong dupOrLate = new AtomicLong();
        final AtomicLong malformed = new AtomicLong();
        /** The sequence number expected next. */
        private volatile int next;
        private final byte[] buf = new byte[70_000];

        Pair(int index) {
            this.index = index;
        }

        /** Queues frame number {@code offered} of {@code len} bytes for the worker. */
        void offer(int len) {
            int seq = (int) offered.getAndIncrement();
            out.add(frame(index, seq, len));
            ready.signal();
        }

        /** Frames offered and neither back nor known lost. */
        long inFlight() {
            return offered.get() - back.get() - skipped.get();
        }

        private void check(IoVec frame) {
            long total = frame.totalBytes();
            if (total > buf.length) {
                malformed.incrementAndGet();
                problem("pair " + index + ": a frame of " + total + " bytes");
                return;
            }
            frame.copyTo(MemorySegment.ofArray(buf), 0, buf.length);
            int len = (int) total - VirtioNet.HDR_SIZE;
            MemorySegment s = MemorySegment.ofArray(buf);
            int e = VirtioNet.HDR_SIZE;
            if (len < 28) {
                malformed.incrementAndGet();
                problem("pair " + index + ": a frame of " + len + " bytes");
                return;
            }
            int seq = s.get(LE32, e + 16);
            int pair = s.get(LE32, e + 20);
            int want = s.get(LE32, e + 24);
            byte[] expect = want >= MIN_FRAME && want <= 65535 ? frame(pair, seq, want) : null;
            if (expect != null && macswap) {
                System.arraycopy(B, 0, expect, e, 6);
                System.arraycopy(A, 0, expect, e + 6, 6);
            }
            boolean same = expect != null && pair == index && want == len
                    && java.util.Arrays.equals(buf, e, (int) total, expect, e, expect.length);
            if (!same) {
                malformed.incrementAndGet();
                problem("pair " + index + ": frame seq " + seq + " of pair " + pair + ", " + len + " bytes (" + want
                        + " sent) differs");
                return;
            }
            int n = next;
            if (seq == n) {
                next = n + 1;
            } else if (seq - n > 0) {
                skipped.addAndGet(seq - n);
                next = seq + 1;
            } else {
                dupOrLate.incrementAndGet();
                problem("pair " + index + ": seq " + seq + " came back after " + (n - 1));
                return;
            }
            back.incrementAndGet();
        }

        Port port() {
            return new Port() {
                @Override
                public int readFd() {
                    return ready.fd();
                }

                @Override
                public long send(IoVec frame) {
                    check(frame);
                    return frame.totalBytes();
                }

                @Override
                public long receive(IoVec into) {
                    byte[] f = out.poll();
                    if (f == null) {
                        return -1;
                    }
                    taken.incrementAndGet();
                    return into.copyFrom(MemorySegment.ofArray(f), 0, f.length);
                }

                @Override
                public void close() {}
            };
        }
    }

    @Override
    public int maxPairs() {
        return pairs.length;
    }

    @Override
    public long features() {
        return 0;
    }

    @Override
    public Port open(int pair) {
        return pairs[pair].port();
    }

    @Override
    public String describe() {
        return "echo check";
    }

    @Override
    public void close() {
        for (Pair p : pairs) {
            p.ready.close();
        }
    }
}
