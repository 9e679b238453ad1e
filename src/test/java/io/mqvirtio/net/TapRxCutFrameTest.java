package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.PacketSocket;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

/**
 * A host whose TAP has a larger MTU than the device (an administrator's {@code ip link set mtu 9000}): the kernel's
 * TAP cuts a frame to the buffer it reads into and says the frame's whole length. Such a frame is dropped and
 * counted, the guest never gets a used length past its buffer nor bytes the kernel did not write (with MRG_RXBUF the
 * chain-by-chain path once handed on a frame whose tail was stale spill memory), and the frames after it arrive
 * whole. Through the RX burst path (buffers big enough for an MTU-sized frame) and chain by chain (smaller ones),
 * with the kernel's real TAP in a namespace of the test's own and our driver as the guest.
 */
@Timeout(60)
class TapRxCutFrameTest {
    static final int ETHERTYPE = 0x88b5; // IEEE local experimental: nothing in the kernel answers it

    @TempDir
    Path dir;

    @ParameterizedTest(name = "mrg={0} buffer={1} packed={2}")
    @CsvSource({"true,2048,false", "false,2048,false", "true,2048,true", "true,1024,false", "false,1024,false"})
    void framesLargerThanTheDeviceMtuAreDroppedAndTheRestArriveWhole(boolean mrg, int bufSize, boolean packed)
            throws Exception {
        String tap = "mqvc" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
                | (mrg ? VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF) : 0)
                | (packed ? VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED) : 0);
        try (TestNetns ns = TestNetns.create(); Arena a = Arena.ofConfined()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            ns.ip("link", "set", tap, "mtu", "9000");
            ns.ip("link", "set", tap, "up");
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("tapcut", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("c.sock"), dev);
                 NetDriver nic = NetDriver.connect(server.path(), new NetDriver.Options(1, 64, bufSize, 5000, features));
                 PacketSocket sock = ns.inside(() -> PacketSocket.open(tap))) {
                // frames of 100, 4000, 200, 6000, 300 bytes, each tagged with its index
                int[] sizes = {100, 4000, 200, 6000, 300};
                PacketSocket.Batch batch = new PacketSocket.Batch(a, sizes.length);
                for (int i = 0; i < sizes.length; i++) {
                    batch.set(i, frame(a, sizes[i], i));
                }
                assertThat(sock.send(batch, sizes.length)).isEqualTo(sizes.length);

                NetQueuePair p = nic.pair(0);
                MemorySegment[] bufs = new MemorySegment[8];
                for (int i = 0; i < bufs.length; i++) {
                    bufs[i] = a.allocate(9000, 64);
                }
                int[] lens = new int[bufs.length];
                List<Integer> got = new ArrayList<>();
                long deadline = System.nanoTime() + 10_000_000_000L;
                while (got.size() < 3 && System.nanoTime() < deadline) {
                    int n = p.receive(bufs, lens, bufs.length);
                    for (int i = 0; i < n; i++) {
                        if (lens[i] < 15 || Short.toUnsignedInt(bufs[i].get(BE16, 12)) != ETHERTYPE) {
                            continue; // the kernel's own frames, if any
                        }
                        int tag = bufs[i].get(ValueLayout.JAVA_BYTE, 14);
                        assertThat(lens[i]).as("frame %d's length", tag).isEqualTo(sizes[tag]);
                        for (int b = 15; b < lens[i]; b++) {
                            assertThat(bufs[i].get(ValueLayout.JAVA_BYTE, b)).as("frame %d byte %d", tag, b)
                                    .isEqualTo(pattern(tag, b));
                        }
                        got.add(tag);
                    }
                    if (n == 0) {
                        p.awaitReceive(100);
                    }
                }
                assertThat(got).as("the frames that fit, whole and in order").containsExactly(0, 2, 4);
                assertThat(p.lastRxError()).as("the driver saw no length past a buffer").isNull();
                HostileDriverTest.await(() -> dev.counters().get(0).drops() == 2, "the two cut frames counted");
            }
        }
    }

    static final ValueLayout.OfShort BE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(java.nio.ByteOrder.BIG_ENDIAN);

    static byte pattern(int tag, int b) {
        return (byte) (tag * 31 + b * 7 + 1);
    }

    /** A broadcast frame of {@code len} bytes of our ethertype: byte 14 its tag, a pattern after. */
    static MemorySegment frame(Arena a, int len, int tag) {
        MemorySegment f = a.allocate(len, 64);
        for (int i = 0; i < 6; i++) {
            f.set(ValueLayout.JAVA_BYTE, i, (byte) 0xff);
        }
        f.set(ValueLayout.JAVA_BYTE, 6, (byte) 0x02);
        f.set(ValueLayout.JAVA_BYTE, 11, (byte) 0x42);
        f.set(BE16, 12, (short) ETHERTYPE);
        f.set(ValueLayout.JAVA_BYTE, 14, (byte) tag);
        for (int b = 15; b < len; b++) {
            f.set(ValueLayout.JAVA_BYTE, b, pattern(tag, b));
        }
        return f;
    }
}
