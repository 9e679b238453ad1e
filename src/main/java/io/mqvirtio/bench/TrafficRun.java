package io.mqvirtio.bench;

import io.mqvirtio.linux.Affinity;
import io.mqvirtio.net.NetDriver;
import io.mqvirtio.net.NetQueuePair;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLongArray;

/**
 * Traffic from our driver: one thread per queue pair sends bursts of UDP frames (and in ECHO mode receives what
 * comes back), for a warm-up and then a measured interval. Per pair: packets and bytes each way, and the thread's
 * CPU time during the measured interval (thread CPU time holds on a loaded machine, wall time does not).
 */
public final class TrafficRun {
    /**
     * TX_ONLY: each pair's thread sends; ECHO: it sends and receives; RX_ONLY: it only receives, and checks that
     * each of the bench's frames arrived as long as it was sent (the count of those that did not is
     * {@link Result#badFrames}; frames the host sent on its own are counted as received, not checked).
     */
    public enum Mode { TX_ONLY, ECHO, RX_ONLY }

    public record PairResult(int pair, long txPackets, long txBytes, long rxPackets, long rxBytes, long cpuNanos) {}

    public record Result(double seconds, int frameSize, List<PairResult> pairs, long badFrames) {
        public long txPackets() {
            return pairs.stream().mapToLong(PairResult::txPackets).sum();
        }

        public long rxPackets() {
            return pairs.stream().mapToLong(PairResult::rxPackets).sum();
        }

        public double txMpps() {
            return txPackets() / seconds / 1e6;
        }

        public double rxMpps() {
            return rxPackets() / seconds / 1e6;
        }

        /** Driver CPU nanoseconds per transmitted packet, over all pairs. */
        public double cpuNsPerPacket() {
            long cpu = pairs.stream().mapToLong(PairResult::cpuNanos).sum();
            return txPackets() == 0 ? Double.NaN : (double) cpu / txPackets();
        }
    }

    private static final int BURST = 32;
    private static final int HEADERS = 14 + 20 + 8; // Ethernet, IPv4, UDP
    private static final int TX = 0, TXB = 1, RX = 2, RXB = 3, BAD = 4;

    private TrafficRun() {}

    public static Result run(NetDriver nic, int pairs, Mode mode, int frameSize, double warmup, double seconds)
            throws InterruptedException {
        return run(nic, pairs, mode, frameSize, warmup, seconds, new int[0], () -> {}, () -> {});
    }

    /**
     * As {@link #run(NetDriver, int, Mode, int, double, double)}, with pair i's thread pinned to
     * {@code cpus[i % cpus.length]} (none when empty), and two hooks run on the calling thread right after the
     * driver's own counters and CPU times are read at the start and at the end of the measured interval, so that a
     * receiver's counters can be sampled over the same interval.
     */
    public static Result run(NetDriver nic, int pairs, Mode mode, int frameSize, double warmup, double seconds, int[] cpus,
                             Runnable atStart, Runnable atEnd) throws InterruptedException {
        try (Running r = start(nic, pairs, mode, frameSize, cpus)) {
            Thread.sleep((long) (warmup * 1000));
            Snapshot a = r.sample();
            atStart.run();
            Thread.sleep((long) (seconds * 1000));
            Snapshot b = r.sample();
            atEnd.run();
            return between(a, b);
        }
    }

    /** The senders' counters and CPU times at one instant. */
    public record Snapshot(long nanos, int frameSize, long[][] counts, long[] cpu) {}

    /** What the senders did from {@code a} to {@code b}. */
    public static Result between(Snapshot a, Snapshot b) {
        List<PairResult> r = new ArrayList<>();
        for (int p = 0; p < a.counts().length; p++) {
            long[] c0 = a.counts()[p];
            long[] c1 = b.counts()[p];
            r.add(new PairResult(p, c1[TX] - c0[TX], c1[TXB] - c0[TXB], c1[RX] - c0[RX], c1[RXB] - c0[RXB],
                    b.cpu()[p] - a.cpu()[p]));
        }
        long bad = 0;
        for (int p = 0; p < a.counts().length; p++) {
            bad += b.counts()[p][BAD] - a.counts()[p][BAD];
        }
        return new Result((b.nanos() - a.nanos()) / 1e9, a.frameSize(), r, bad);
    }

    /** Senders that run until closed; {@link #sample()} reads their counters whenever asked. */
    public static final class Running implements AutoCloseable {
        private final AtomicBoolean stop = new AtomicBoolean();
        private final AtomicLongArray[] counts;
        private final List<Thread> threads = new ArrayList<>();
        private final int frameSize;
        private final ThreadMXBean mx = ManagementFactory.getThreadMXBean();

        private Running(NetDriver nic, int pairs, Mode mode, int frameSize, int[] cpus) {
            this.frameSize = frameSize;
            this.counts = new AtomicLongArray[pairs];
            for (int p = 0; p < pairs; p++) {
                counts[p] = new AtomicLongArray(4 + 12); // padded
                int pair = p;
                int cpu = cpus.length == 0 ? -1 : cpus[p % cpus.length];
                threads.add(Thread.ofPlatform().name("traffic-qp" + p).daemon().start(() -> {
                    if (cpu >= 0) {
                        Affinity.pin(cpu);
                    }
                    loop(nic.pair(pair), pair, mode, frameSize, stop, counts[pair]);
                }));
            }
        }

        public Snapshot sample() {
            long[][] c = snapshot(counts);
            long[] cpu = threads.stream().mapToLong(t -> mx.getThreadCpuTime(t.threadId())).toArray();
            return new Snapshot(System.nanoTime(), frameSize, c, cpu);
        }

        /** Stops the senders and waits for them. */
        @Override
        public void close() throws InterruptedException {
            stop.set(true);
            for (Thread t : threads) {
                t.join(5000);
            }
        }
    }

    /** Starts one sender thread per pair, pair i's on {@code cpus[i % cpus.length]} (not pinned when empty). */
    public static Running start(NetDriver nic, int pairs, Mode mode, int frameSize, int[] cpus) {
        return new Running(nic, pairs, mode, frameSize, cpus);
    }

    private static long[][] snapshot(AtomicLongArray[] c) {
        long[][] s = new long[c.length][5];
        for (int p = 0; p < c.length; p++) {
            for (int i = 0; i < 5; i++) {
                s[p][i] = c[p].getAcquire(i);
            }
        }
        return s;
    }

    private static void loop(NetQueuePair q, int pair, Mode mode, int frameSize, AtomicBoolean stop, AtomicLongArray out) {
        try (Arena a = Arena.ofConfined()) {
            // Like DPDK's txonly: each frame's Ethernet, IPv4 and UDP headers are written into the pair's own TX
            // buffer (zero-copy send), the payload is left as it is.
            MemorySegment template = udpFrame(a, pair, frameSize);
            long headers = Math.min(HEADERS, frameSize);
            NetQueuePair.FrameWriter writer = (buf, i) -> {
                MemorySegment.copy(template, 0, buf, 0, headers);
                return frameSize;
            };
            MemorySegment[] bufs = new MemorySegment[BURST];
            for (int i = 0; i < BURST; i++) {
                bufs[i] = a.allocate(2048);
            }
            int[] lens = new int[BURST];
            long tx = 0, txb = 0, rx = 0, rxb = 0, bad = 0;
            if (mode == Mode.RX_ONLY) {
                while (!stop.get()) {
                    int r = q.receive(bufs, lens, BURST);
                    rx += r;
                    for (int i = 0; i < r; i++) {
                        rxb += lens[i];
                        if (lens[i] != Math.max(frameSize, 60) && isBenchUdp(bufs[i], lens[i])) {
                            bad++; // one of the bench's frames, not as long as it was sent
                        }
                    }
                    out.setRelease(RX, rx);
                    out.setRelease(RXB, rxb);
                    out.setRelease(BAD, bad);
                    if (r == 0) {
                        Thread.yield(); // another pair's receiver, or the host's sender, may share this CPU
                    }
                }
                return;
            }
            while (!stop.get()) {
                int n = q.sendInPlace(BURST, writer);
                tx += n;
                txb += (long) n * frameSize;
                if (mode == Mode.ECHO) {
                    int r = q.receive(bufs, lens, BURST);
                    rx += r;
                    for (int i = 0; i < r; i++) {
                        rxb += lens[i];
                    }
                }
                out.setRelease(TX, tx);
                out.setRelease(TXB, txb);
                out.setRelease(RX, rx);
                out.setRelease(RXB, rxb);
                if (n == 0) {
                    // The ring is full. Another pair's sender may share this CPU (more pairs than cores): let it run
                    // now rather than spin out the time slice while only our backend could make room. Not
                    // awaitReady (sleep until room or a frame back): a wake-up per full ring, through the backend's
                    // call, measured 0.51-0.74 Mpps against 1.25-1.88 with this yield (demo, 1 pair, 64 B, 3 runs
                    // each alternated, 2 shared vCPUs), for about the same CPU: a bench wants the ring kept full.
                    Thread.yield();
                }
            }
        }
    }

    /**
     * Whether a received frame is one of the bench's UDP frames (IPv4, UDP to port 9), not something the host's
     * kernel sent on its own (IPv6 neighbour discovery when a TAP comes up, for one).
     */
    static boolean isBenchUdp(MemorySegment f, int len) {
        return len >= HEADERS && f.get(ValueLayout.JAVA_BYTE, 12) == 0x08 && f.get(ValueLayout.JAVA_BYTE, 13) == 0
                && f.get(ValueLayout.JAVA_BYTE, 23) == 17 && f.get(ValueLayout.JAVA_BYTE, 36) == 0
                && f.get(ValueLayout.JAVA_BYTE, 37) == 9;
    }

    /** A UDP/IPv4 frame of {@code len} bytes (at least 60) from a per-pair source port. */
    static MemorySegment udpFrame(Arena a, int pair, int len) {
        return udpFrame(a, len, 0x10 + pair, 0xc0a80002 + pair, 0xc0a80001, 1024 + pair);
    }

    /**
     * The bench's UDP/IPv4 frame of {@code len} bytes (at least 60): to 02:00:00:00:00:01 from 02:00:00:00:00:SRC,
     * IPv4 {@code srcIp} to {@code dstIp}, UDP from {@code srcPort} to the discard port (9); checksums left zero.
     */
    static MemorySegment udpFrame(Arena a, int len, int srcMacLast, int srcIp, int dstIp, int srcPort) {
        MemorySegment f = a.allocate(Math.max(len, 60), 64);
        var be16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
        var be32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
        f.set(ValueLayout.JAVA_BYTE, 0, (byte) 0x02);
        f.set(ValueLayout.JAVA_BYTE, 5, (byte) 0x01);
        f.set(ValueLayout.JAVA_BYTE, 6, (byte) 0x02);
        f.set(ValueLayout.JAVA_BYTE, 11, (byte) srcMacLast);
        f.set(be16, 12, (short) 0x0800);
        f.set(ValueLayout.JAVA_BYTE, 14, (byte) 0x45);
        f.set(be16, 16, (short) (f.byteSize() - 14));
        f.set(ValueLayout.JAVA_BYTE, 22, (byte) 64);
        f.set(ValueLayout.JAVA_BYTE, 23, (byte) 17);
        f.set(be32, 26, srcIp);
        f.set(be32, 30, dstIp);
        f.set(be16, 34, (short) srcPort);
        f.set(be16, 36, (short) 9);
        f.set(be16, 38, (short) (f.byteSize() - 34));
        return f;
    }
}
