package io.mqvirtio.bench.jmh;

import io.mqvirtio.virtio.DescriptorChain;
import java.lang.foreign.Arena;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
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
 * The split ring's operations, one thread, per chain (a burst of 32 per invocation, as the data path works):
 * the device's pop (descriptor walk, validation, address translation) and push/publish/notify decision, the
 * driver's add/publish/kick decision and reap, and a whole round trip (about the sum of the three). One or two descriptors per chain (a
 * one-buffer TX frame; header and frame in two buffers).
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 1, jvmArgsAppend = "--enable-native-access=ALL-UNNAMED")
@State(Scope.Thread)
public class RingBench {
    static final int BURST = 32;

    @Param({"1", "2"})
    int descriptors;

    @Param({"true"})
    boolean eventIdx;

    private Arena arena;
    private Rings r;
    private final DescriptorChain chain = new DescriptorChain(16);
    private long[] addr;
    private int[] len;
    private final int[] heads = new int[BURST];
    private int usedIdx;
    private static final ValueLayout.OfInt U32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final VarHandle U16_VH = ValueLayout.JAVA_SHORT.withOrder(ByteOrder.LITTLE_ENDIAN).varHandle();

    @Setup(Level.Trial)
    public void setup() {
        arena = Arena.ofShared();
        r = new Rings(arena, 256, eventIdx);
        addr = new long[descriptors];
        len = new int[descriptors];
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }

    private void addBurst(int base) {
        for (int i = 0; i < BURST; i++) {
            for (int d = 0; d < descriptors; d++) {
                addr[d] = r.buffer(base + i) + d * 1024L;
                len[d] = d == 0 && descriptors > 1 ? 12 : 76;
            }
            r.driver.add(addr, len, descriptors, 0);
        }
        r.driver.publish();
    }

    /** Device: pop 32 chains (walk, validate, translate), then give them back (unpop) for the next invocation. */
    @Benchmark
    @OperationsPerInvocation(BURST)
    public int devicePop() {
        if (r.device.lastAvailIndex() == r.driver.availIndex()) {
            addBurst(0); // once: a burst stays available, popped and given back again and again
        }
        int heads = 0;
        for (int i = 0; i < BURST; i++) {
            r.device.pop(chain);
            heads += chain.head();
        }
        r.device.giveBack(BURST);
        return heads;
    }

    /** Device: push 32 used entries, publish the used index once, decide on a notification. */
    @Benchmark
    @OperationsPerInvocation(BURST)
    public boolean devicePushPublish() {
        for (int i = 0; i < BURST; i++) {
            r.device.push(i, 64);
        }
        r.device.publish();
        return r.device.needsNotification();
    }

    /**
     * Driver: add 32 chains, publish, decide on a kick; then (standing in for the device: two plain stores per entry)
     * the used entries are written; the driver reaps 32.
     */
    @Benchmark
    @OperationsPerInvocation(BURST)
    public int driverAddReap() {
        for (int i = 0; i < BURST; i++) {
            for (int d = 0; d < descriptors; d++) {
                addr[d] = r.buffer(i) + d * 1024L;
                len[d] = d == 0 && descriptors > 1 ? 12 : 76;
            }
            heads[i] = r.driver.add(addr, len, descriptors, 0);
        }
        r.driver.publish();
        r.driver.needsKick();
        for (int i = 0; i < BURST; i++) {
            long e = r.usedOffset + 4 + 8L * (usedIdx++ & (r.size - 1));
            r.mem.set(U32, e, heads[i]);
            r.mem.set(U32, e + 4, 0);
        }
        U16_VH.setRelease(r.mem, r.usedOffset + 2, (short) usedIdx);
        int h;
        int sum = 0;
        while ((h = r.driver.reap()) >= 0) {
            sum += h;
        }
        return sum;
    }

    /** The whole round: the driver adds and publishes 32, the device pops, pushes and publishes them, the driver reaps. */
    @Benchmark
    @OperationsPerInvocation(BURST)
    public int roundTrip() {
        addBurst(0);
        r.driver.needsKick();
        while (r.device.pop(chain)) {
            r.device.push(chain.head(), 0);
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
