package io.mqvirtio.bench.jmh;

import io.mqvirtio.virtio.DescriptorChain;
import java.lang.foreign.Arena;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * A ring's operations, split or packed, with or without IN_ORDER, one thread, per chain (a burst of 32 per
 * invocation, as the data path works), through the {@code DriverRing} and {@code DeviceRing} the data path uses:
 * the device's pop (descriptor walk, validation, address translation); the device's whole part (pop, complete,
 * publish, notification decision); the driver's add/publish/kick decision and reap; and a whole round trip. One or
 * two descriptors per chain (a one-buffer TX frame; header and frame in two buffers). Completions have length 0, as
 * TX's do: with IN_ORDER a burst of them is one used entry.
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 1, jvmArgsAppend = "--enable-native-access=ALL-UNNAMED")
@State(Scope.Thread)
public class RingBench {
    static final int BURST = 32;

    /** The virtqueue layout: split (VIRTIO 1.3, 2.7) or packed (2.8, VIRTIO_F_RING_PACKED). */
    @Param({"split", "packed"})
    String layout;

    /** VIRTIO_F_IN_ORDER negotiated. */
    @Param({"false", "true"})
    boolean inOrder;

    @Param({"1", "2"})
    int descriptors;

    @Param({"true"})
    boolean eventIdx;

    private Arena arena;
    private Rings r;
    private final DescriptorChain chain = new DescriptorChain(16);
    private long[] addr;
    private int[] len;
    private final int[] ids = new int[BURST];
    private boolean primed;

    @Setup(Level.Trial)
    public void setup() {
        if (!layout.equals("split") && !layout.equals("packed")) {
            throw new IllegalArgumentException("layout must be split or packed, got " + layout);
        }
        arena = Arena.ofShared();
        r = new Rings(arena, 256, layout.equals("packed"), inOrder, eventIdx);
        addr = new long[descriptors];
        len = new int[descriptors];
        for (int d = 0; d < descriptors; d++) {
            len[d] = d == 0 && descriptors > 1 ? 12 : 76;
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }

    /**
     * After each iteration: neither side found the other (or a stand-in) breaking the ring's rules, and every chain
     * added was reaped (devicePop's one burst stays in flight): a figure is only worth something if the ring worked.
     */
    @TearDown(Level.Iteration)
    public void check() {
        if (r.driver.isBroken() || r.device.isBroken()) {
            throw new IllegalStateException("ring broken: driver " + r.driver.brokenReason() + ", device "
                    + r.device.brokenReason());
        }
        int inFlight = r.driver.inFlight();
        if (inFlight != 0 && inFlight != BURST) {
            throw new IllegalStateException(inFlight + " chains in flight after an iteration");
        }
    }

    /** Pops the next chain, which must be there (a benchmark that popped nothing would measure nothing). */
    private void pop() {
        if (!r.device.pop(chain)) {
            throw new IllegalStateException("no chain available");
        }
    }

    private void addBurst() {
        for (int i = 0; i < BURST; i++) {
            for (int d = 0; d < descriptors; d++) {
                addr[d] = r.buffer(i) + d * 1024L;
            }
            ids[i] = r.driver.add(addr, len, descriptors, 0);
        }
        r.driver.publish();
    }

    /** Device: pop 32 chains (walk, validate, translate), then give them back for the next invocation. */
    @Benchmark
    @OperationsPerInvocation(BURST)
    public int devicePop() {
        if (!primed) {
            addBurst(); // once: a burst stays available, popped and given back again and again
            primed = true;
        }
        int ids = 0;
        for (int i = 0; i < BURST; i++) {
            pop();
            ids += chain.id();
        }
        r.device.giveBack(BURST);
        return ids;
    }

    /**
     * Device: pop 32 chains, complete each, publish once, decide on a notification; then (standing in for the
     * driver: the stores of each chain's descriptors, and of the split ring's avail slots) 32 are made available
     * again. Minus {@link #devicePop}, about what completing and publishing cost.
     */
    @Benchmark
    @OperationsPerInvocation(BURST)
    public boolean deviceComplete() {
        if (!primed) {
            r.offer(BURST, descriptors, len);
            primed = true;
        }
        for (int i = 0; i < BURST; i++) {
            pop();
            r.device.complete(chain, 0);
        }
        r.device.publish();
        boolean notify = r.device.needsNotification();
        r.offer(BURST, descriptors, len);
        return notify;
    }

    /**
     * Driver: add 32 chains, publish, decide on a kick; then (standing in for the device: the stores of one used
     * entry per chain) they are used; the driver reaps 32.
     */
    @Benchmark
    @OperationsPerInvocation(BURST)
    public int driverAddReap() {
        addBurst();
        r.driver.needsKick();
        r.useAll(ids, BURST, descriptors);
        int h;
        int sum = 0;
        while ((h = r.driver.reap()) >= 0) {
            sum += h;
        }
        return sum;
    }

    /** The whole round: the driver adds and publishes 32, the device pops, completes and publishes them, the driver reaps. */
    @Benchmark
    @OperationsPerInvocation(BURST)
    public int roundTrip() {
        addBurst();
        r.driver.needsKick();
        while (r.device.pop(chain)) {
            r.device.complete(chain, 0);
        }
        r.device.publish();
        r.device.needsNotification();
        int h;
        int sum = 0;
        while ((h = r.driver.reap()) >= 0) {
            sum += h;
        }
        return sum;
    }
}
