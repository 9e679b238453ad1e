package io.mqvirtio.bench.jmh;

import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.DescriptorChain;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.concurrent.TimeUnit;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;
import org.openjdk.jmh.infra.Blackhole;

/**
 * The 12-byte virtio-net header (virtio_net_hdr_v1) as the data path handles it, per frame: the driver zeroes it in
 * a TX buffer (with a slice and fill, or with three plain stores), reads {@code num_buffers} from an RX buffer and
 * parses the offload fields; the device writes {@code num_buffers} into the first RX chain it used (through
 * {@link DescriptorChain#writeTo}, as the worker does, or with one store into the chain's first buffer).
 */
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 1, jvmArgsAppend = "--enable-native-access=ALL-UNNAMED")
@State(Scope.Thread)
public class HeaderBench {
    private static final ValueLayout.OfShort LE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    private Arena arena;
    private Rings r;
    private MemorySegment bufs;
    private final DescriptorChain rxChain = new DescriptorChain(16);
    private MemorySegment numBuffers;
    private int slot;

    @Setup(Level.Trial)
    public void setup() {
        arena = Arena.ofShared();
        r = new Rings(arena, 256, false, false, true); // split: the header is the same on both layouts
        bufs = r.mem.asSlice(r.bufBase);
        for (int i = 0; i < 256; i++) {
            bufs.set(LE16, (long) i * Rings.BUF + VirtioNet.HDR_NUM_BUFFERS, (short) 1);
            bufs.set(ValueLayout.JAVA_BYTE, (long) i * Rings.BUF + VirtioNet.HDR_FLAGS, (byte) VirtioNet.HDR_F_NEEDS_CSUM);
        }
        // one writable RX chain, as a worker pops it
        r.driver.add(new long[] {r.buffer(0)}, new int[] {Rings.BUF}, 0, 1);
        r.driver.publish();
        r.device.pop(rxChain);
        numBuffers = arena.allocate(2);
        numBuffers.set(LE16, 0, (short) 1);
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        arena.close();
    }

    private long nextBase() {
        slot = (slot + 1) & 255;
        return (long) slot * Rings.BUF;
    }

    /** Driver TX, as NetQueuePair.send did: a 12-byte slice of the buffers, filled with zeros. */
    @Benchmark
    public void zeroHeaderSliceFill() {
        bufs.asSlice(nextBase(), VirtioNet.HDR_SIZE).fill((byte) 0);
    }

    /** Driver TX with three plain stores (8 + 4 bytes). */
    @Benchmark
    public void zeroHeaderStores() {
        long b = nextBase();
        bufs.set(LE64, b, 0L);
        bufs.set(LE32, b + 8, 0);
    }

    /** Driver RX: num_buffers of a mergeable-buffers frame. */
    @Benchmark
    public int readNumBuffers() {
        return Short.toUnsignedInt(bufs.get(LE16, nextBase() + VirtioNet.HDR_NUM_BUFFERS));
    }

    /** Every field of the header parsed (what a consumer of offloads reads per frame). */
    @Benchmark
    public void parseHeader(Blackhole bh) {
        long b = nextBase();
        bh.consume(bufs.get(ValueLayout.JAVA_BYTE, b + VirtioNet.HDR_FLAGS));
        bh.consume(bufs.get(ValueLayout.JAVA_BYTE, b + VirtioNet.HDR_GSO_TYPE));
        bh.consume(bufs.get(LE16, b + VirtioNet.HDR_HDR_LEN));
        bh.consume(bufs.get(LE16, b + VirtioNet.HDR_GSO_SIZE));
        bh.consume(bufs.get(LE16, b + VirtioNet.HDR_CSUM_START));
        bh.consume(bufs.get(LE16, b + VirtioNet.HDR_CSUM_OFFSET));
        bh.consume(bufs.get(LE16, b + VirtioNet.HDR_NUM_BUFFERS));
    }

    /** Device RX, as the worker does: num_buffers copied into the chain through DescriptorChain.writeTo. */
    @Benchmark
    public long writeNumBuffersThroughChain() {
        return rxChain.writeTo(VirtioNet.HDR_NUM_BUFFERS, numBuffers);
    }

    /** Device RX with one store into the chain's first buffer (bounds-checked slice of guest memory). */
    @Benchmark
    public void writeNumBuffersStore() {
        rxChain.segment(0).set(LE16, VirtioNet.HDR_NUM_BUFFERS, (short) 1);
    }
}
