package io.mqvirtio.net;

import static io.mqvirtio.net.HostileDriverTest.await;
import static io.mqvirtio.virtio.SplitRing.DESC_F_NEXT;
import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.Fd;
import io.mqvirtio.linux.IoUring;
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
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * TX through io_uring into a real TAP under a hostile driver, one burst of odd chains: a header and frame split over
 * descriptors at odd places, a chain of nothing but a header (the TAP refuses it), frames of exactly a slot and of
 * one byte more (that one goes by writev, between batched ones), a frame far larger than a slot over two
 * descriptors, and a guest that rewrites a frame while it is in flight. What the kernel received (a packet socket on
 * the TAP) is exactly the chains' bytes, in the ring's order; the refused chain costs one error; no ring breaks and
 * the queue still uses io_uring.
 */
@Timeout(60)
class TapUringHostileDriverTest {
    private static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);
    private static final int SLOT = 2048; // TapUringWriter.SLOT_BYTES: header and frame

    @TempDir
    Path dir;

    /** A frame of {@code len} bytes the TAP takes as its own (broadcast, local experimental ethertype), marked {@code seq}. */
    private static byte[] frame(int len, int seq) {
        byte[] f = new byte[len];
        for (int i = 0; i < len; i++) {
            f[i] = (byte) (seq * 31 + i);
        }
        for (int i = 0; i < 6; i++) {
            f[i] = (byte) 0xff;
        }
        f[6] = 0x02;
        f[12] = (byte) 0x88;
        f[13] = (byte) 0xb5;
        f[14] = (byte) seq;
        return f;
    }

    @Test
    void oddChainsInOneBurstReachTheTapExactlyAndInOrder() throws Exception {
        assumeTrue(TestNetns.isRoot() && IoUring.unavailable() == null, "needs root and io_uring");
        String tap = "mqvh" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.IO_URING));
            ns.ip("link", "set", tap, "mtu", "9000", "up");
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("uringhostile", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("u.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20);
                 PacketSocket sock = ns.inside(() -> PacketSocket.open(tap))) {
                EvilDriver.Ring tx = d.tx(0);
                List<byte[]> expected = new ArrayList<>();
                int desc = 0;
                // 1: header split 5 + 7, the frame split 3 + 97 over the next descriptors
                byte[] f1 = frame(100, 1);
                long o1 = d.alloc(12 + 100);
                d.mem.asSlice(o1, 12).fill((byte) 0);
                MemorySegment.copy(MemorySegment.ofArray(f1), 0, d.mem, o1 + 12, 100);
                tx.desc(desc, d.gpa(o1), 5, DESC_F_NEXT, desc + 1);
                tx.desc(desc + 1, d.gpa(o1 + 5), 7 + 3, DESC_F_NEXT, desc + 2);
                tx.desc(desc + 2, d.gpa(o1 + 15), 97, 0, 0);
                tx.offer(desc);
                desc += 3;
                expected.add(f1);
                // 2: nothing but a header: a frame of no bytes, which the TAP refuses
                long h = d.alloc(12);
                d.mem.asSlice(h, 12).fill((byte) 0);
                tx.desc(desc, d.gpa(h), 12, 0, 0);
                tx.offer(desc++);
                // 3: exactly a slot; 4: a byte more (writev, after what is queued); 5: a slot again; 6: 9000 bytes
                int[] lens = {SLOT - 12, SLOT - 11, SLOT - 12, 9000};
                for (int k = 0; k < lens.length; k++) {
                    byte[] f = frame(lens[k], 3 + k);
                    long o = d.alloc(12 + f.length);
                    d.mem.asSlice(o, 12).fill((byte) 0);
                    MemorySegment.copy(MemorySegment.ofArray(f), 0, d.mem, o + 12, f.length);
                    if (f.length > 4000) {
                        tx.desc(desc, d.gpa(o), 12 + 4000, DESC_F_NEXT, desc + 1);
                        tx.desc(desc + 1, d.gpa(o + 12 + 4000), f.length - 4000, 0, 0);
                        tx.offer(desc);
                        desc += 2;
                    } else {
                        tx.desc(desc, d.gpa(o), 12 + f.length, 0, 0);
                        tx.offer(desc++);
                    }
                    expected.add(f);
                }
                tx.kick(); // one kick: the worker takes them in one burst
                int chains = 6;
                await(() -> tx.usedIdx() == chains, "the six chains used");
                await(() -> dev.counters().get(1).packets() + dev.counters().get(1).errors() == chains, "all counted");

                // a guest that rewrites a frame as fast as it can while it is in flight: the TAP gets some version of
                // it, of its length, and nothing outside the chain's buffers is read
                Thread scribbler = Thread.ofPlatform().daemon().start(() -> {
                    for (long i = 0; !Thread.currentThread().isInterrupted(); i++) {
                        d.mem.asSlice(o1 + 12 + 15, 85).fill((byte) i);
                    }
                });
                int rewritten = 20;
                try {
                    for (int i = 0; i < rewritten; i++) {
                        int at = tx.usedIdx();
                        tx.desc(desc, d.gpa(o1), 12 + 100, 0, 0);
                        tx.offer(desc);
                        tx.kick();
                        await(() -> tx.usedIdx() == at + 1, "a rewritten frame used");
                    }
                } finally {
                    scribbler.interrupt();
                    scribbler.join(5000);
                }

                List<byte[]> got = new ArrayList<>();
                try (Arena a = Arena.ofConfined()) {
                    MemorySegment buf = a.allocate(65536);
                    long deadline = System.nanoTime() + 5_000_000_000L;
                    while (got.size() < expected.size() + rewritten && System.nanoTime() < deadline) {
                        if (sock.poll(Fd.POLLIN, 200) > 0) {
                            long n = sock.read(buf);
                            if (n >= 15 && buf.get(ValueLayout.JAVA_BYTE, 12) == (byte) 0x88) {
                                got.add(buf.asSlice(0, n).toArray(ValueLayout.JAVA_BYTE));
                            }
                        }
                    }
                }
                assertThat(got).hasSize(expected.size() + rewritten);
                for (int i = 0; i < expected.size(); i++) {
                    assertThat(got.get(i)).as("frame %d: exactly the chain's bytes, in ring order", i).isEqualTo(expected.get(i));
                }
                for (int i = expected.size(); i < got.size(); i++) {
                    assertThat(got.get(i)).as("a rewritten frame: its own length and header").hasSize(100)
                            .startsWith(java.util.Arrays.copyOf(f1, 15));
                }
                QueueCounters.Snapshot c = dev.counters().get(1);
                assertThat(c.packets()).isEqualTo(expected.size() + rewritten);
                assertThat(c.errors()).as("the header-only chain").isEqualTo(1);
                assertThat(tx.err.drain()).as("no ring broke").isZero();
                assertThat(dev.ioMethods()).containsExactly("readv", "io_uring");
            }
        }
    }
}
