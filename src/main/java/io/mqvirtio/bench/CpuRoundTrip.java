package io.mqvirtio.bench;

import io.mqvirtio.linux.Affinity;
import java.util.Arrays;
import java.util.concurrent.atomic.AtomicLong;

/**
 * How long a cache line takes to go from one CPU to another and back: two threads pinned to the two CPUs hand a
 * counter back and forth. A virtqueue moves at this speed (descriptors, ring entries and indexes cross between the
 * driver's CPU and the device's), so a benchmark point is only comparable with points measured while the round trip
 * was about the same. On a VM the figure is not a constant: the hypervisor places the two virtual CPUs on nearby or
 * distant physical cores (the dev VMs measured from about 70 to about 450 ns within minutes).
 */
public final class CpuRoundTrip {
    private CpuRoundTrip() {}

    /**
     * The median of {@code samples} measurements of {@code trips} round trips each between {@code cpuA} and
     * {@code cpuB}, in nanoseconds per round trip; NaN if the threads could not be pinned or did not finish in time.
     */
    public static double measure(int cpuA, int cpuB, int trips, int samples) {
        double[] r = new double[samples];
        for (int s = 0; s < samples; s++) {
            r[s] = once(cpuA, cpuB, trips);
            if (Double.isNaN(r[s])) {
                return Double.NaN;
            }
        }
        Arrays.sort(r);
        return r[samples / 2];
    }

    private static double once(int cpuA, int cpuB, int trips) {
        AtomicLong line = new AtomicLong();
        AtomicLong result = new AtomicLong(-1);
        long deadline = System.nanoTime() + 2_000_000_000L;
        Thread b = Thread.ofPlatform().name("roundtrip-b").daemon().start(() -> {
            if (!pin(cpuB, line)) {
                return;
            }
            for (long i = 1; i <= trips; i++) {
                long want = 2 * i - 1;
                while (line.get() != want) {
                    if (line.get() < 0) {
                        return;
                    }
                    Thread.onSpinWait();
                }
                line.set(2 * i);
            }
        });
        Thread a = Thread.ofPlatform().name("roundtrip-a").daemon().start(() -> {
            if (!pin(cpuA, line)) {
                return;
            }
            long t0 = System.nanoTime();
            for (long i = 1; i <= trips; i++) {
                if (!line.compareAndSet(2 * i - 2, 2 * i - 1)) {
                    return; // the other side gave up
                }
                while (line.get() != 2 * i) {
                    if (line.get() < 0 || System.nanoTime() > deadline) {
                        line.set(-1);
                        return;
                    }
                    Thread.onSpinWait();
                }
            }
            result.set(System.nanoTime() - t0);
        });
        try {
            a.join(3000);
            line.set(-1); // release b if a stopped early
            b.join(1000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            line.set(-1);
            return Double.NaN;
        }
        long ns = result.get();
        return ns < 0 ? Double.NaN : (double) ns / trips;
    }

    /** Pins the calling thread; on failure tells the other thread to give up (-1 on the line). */
    private static boolean pin(int cpu, AtomicLong line) {
        try {
            Affinity.pin(cpu);
            return true;
        } catch (RuntimeException e) {
            line.set(-1);
            return false;
        }
    }
}
