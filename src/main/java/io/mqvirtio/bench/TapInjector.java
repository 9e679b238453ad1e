package io.mqvirtio.bench;

import io.mqvirtio.linux.Affinity;
import io.mqvirtio.linux.PacketSocket;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLongArray;

/**
 * The host side of the TAP path's receive scenarios: threads that send UDP frames onto a TAP device through packet
 * sockets bound to it, 32 frames per {@code sendmmsg}, each frame of a burst a flow of its own (its own UDP source
 * port), so that the kernel's TAP queue selection (a hash of the flow) spreads them over the device's queues as it
 * spreads a host's real traffic. What a queue's reader does not take in time the TAP drops (its queue is full),
 * as it would for any host sender; the receiver counts what arrived.
 */
final class TapInjector implements AutoCloseable {
    static final int BURST = 32;

    private final AtomicBoolean stop = new AtomicBoolean();
    private final List<Thread> threads = new ArrayList<>();
    private final AtomicLongArray sent;
    private final List<PacketSocket> sockets;
    private final ThreadMXBean mx = ManagementFactory.getThreadMXBean();

    /** {@code sockets}: one per thread, opened (in the TAP's namespace) by the caller and closed here. */
    TapInjector(List<PacketSocket> sockets, int frameSize, int[] cpus) {
        this.sockets = sockets;
        this.sent = new AtomicLongArray(sockets.size() * 8); // a line per thread
        for (int t = 0; t < sockets.size(); t++) {
            int thread = t;
            int cpu = cpus.length == 0 ? -1 : cpus[t % cpus.length];
            PacketSocket s = sockets.get(t);
            threads.add(Thread.ofPlatform().name("inject-" + t).daemon().start(() -> {
                if (cpu >= 0) {
                    Affinity.pin(cpu);
                }
                loop(s, thread, frameSize);
            }));
        }
    }

    private void loop(PacketSocket s, int thread, int frameSize) {
        try (Arena a = Arena.ofConfined()) {
            PacketSocket.Batch batch = new PacketSocket.Batch(a, BURST);
            for (int i = 0; i < BURST; i++) {
                batch.set(i, frame(a, frameSize, thread * BURST + i));
            }
            long n = 0;
            while (!stop.get()) {
                int r = s.send(batch, BURST);
                if (r > 0) {
                    n += r;
                    sent.setRelease(thread * 8, n);
                }
                // after every burst: whatever shares this CPU (the guest's driver threads in scenario 6) runs too
                Thread.yield();
            }
        } catch (RuntimeException e) {
            if (!stop.get()) {
                throw e;
            }
        }
    }

    /** A UDP/IPv4 frame of {@code len} bytes (at least 60) of flow {@code flow}, towards the guest's MAC. */
    static MemorySegment frame(Arena a, int len, int flow) {
        return TrafficRun.udpFrame(a, len, 0xfe, 0xc0a80001, 0xc0a80002, 20000 + flow);
    }

    /** The senders' rows of a measurement: thread i's CPU between two {@link #cpu} samples, for {@code sent} frames. */
    static List<Measurement.ThreadCpu> threadCpu(long[] before, long[] after, long sent) {
        List<Measurement.ThreadCpu> rows = new ArrayList<>();
        for (int i = 0; i < before.length; i++) {
            rows.add(new Measurement.ThreadCpu(Measurement.TX, "inject-" + i, after[i] - before[i], sent));
        }
        return rows;
    }

    /** Frames the kernel took from all threads so far. */
    long sent() {
        long n = 0;
        for (int t = 0; t < threads.size(); t++) {
            n += sent.getAcquire(t * 8);
        }
        return n;
    }

    /** Each thread's CPU time so far, in thread order. */
    long[] cpu() {
        return threads.stream().mapToLong(t -> mx.getThreadCpuTime(t.threadId())).toArray();
    }

    int threads() {
        return threads.size();
    }

    @Override
    public void close() throws InterruptedException {
        stop.set(true);
        for (Thread t : threads) {
            t.join(5000);
        }
        sockets.forEach(PacketSocket::close);
    }
}
