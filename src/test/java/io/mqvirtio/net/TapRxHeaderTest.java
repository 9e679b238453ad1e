package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.PacketSocket;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.SplitRing;
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
 * A host that turns on the TAP's offloads behind the device's back: TUNSETOFFLOAD through a queue of its own (the
 * offloads are the device's, not a queue's) after the device set them by what the guest negotiated. The kernel then
 * hands our queue frames with a partial checksum (virtio-net header flag NEEDS_CSUM; here a UDP datagram the host
 * sends through the TAP). A guest that did not negotiate GUEST_CSUM must never get one (VIRTIO 1.3 5.1.6.4.1: the
 * device sets flags to zero; the guest would take the partial checksum for a bad one): it is dropped and counted as
 * an error of the RX queue, and the frames around it arrive. They used to reach the guest as they were. A guest that
 * negotiated GUEST_CSUM gets it. Through the RX burst path (buffers for a whole frame) and chain by chain.
 */
@Timeout(60)
class TapRxHeaderTest {
    @TempDir
    Path dir;

    @ParameterizedTest(name = "guestCsum={0} buffer={1}")
    @CsvSource({"false,2048", "false,1024", "true,2048", "true,1024"})
    void framesWithOffloadsTheGuestDidNotNegotiateNeverReachIt(boolean guestCsum, int bufSize) throws Exception {
        assumeTrue(TestNetns.isRoot(), "needs root");
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ)
                | (guestCsum ? VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM) : 0);
        String tap = "mqvh" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); Arena a = Arena.ofConfined()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            ns.ip("addr", "add", "10.9.0.1/24", "dev", tap);
            ns.ip("link", "set", tap, "up");
            ns.ip("neigh", "add", "10.9.0.2", "lladdr", "02:00:00:00:00:02", "dev", tap, "nud", "permanent");
            try (Tap host = ns.inside(() -> Tap.openQueue(tap, true));
                 NetDevice dev = new NetDevice(NetDevice.Config.of("taphdr", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("h.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 1, 64, features, 1 << 20);
                 PacketSocket sock = ns.inside(() -> PacketSocket.open(tap))) {
                HostileDriverTest.sendValid(d, 0, HostileDriverTest.frame(100, 1), 0);
                HostileDriverTest.await(() -> dev.counters().get(1).packets() == 1, "our queue attached");
                host.setOffload(Tap.TUN_F_CSUM | Tap.TUN_F_TSO4); // the host's, after ours
                host.detach(); // every frame for the TAP's queues now comes to ours

                EvilDriver.Ring rx = d.rx(0);
                long[] offs = new long[8];
                for (int i = 0; i < offs.length; i++) {
                    offs[i] = d.alloc(bufSize);
                    rx.desc(i, d.gpa(offs[i]), bufSize, SplitRing.DESC_F_WRITE, 0);
                    rx.offer(i);
                }
                rx.kick();
                PacketSocket.Batch b = new PacketSocket.Batch(a, 1);
                b.set(0, TapRxCutFrameTest.frame(a, 100, 0));
                sock.send(b, 1);
                HostileDriverTest.await(() -> rx.usedIdx() == 1, "the first frame");
                ns.exec("python3", "-c", "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                        + "s.sendto(b'x' * 100, ('10.9.0.2', 9))");
                b.set(0, TapRxCutFrameTest.frame(a, 100, 2));
                sock.send(b, 1);
                int want = guestCsum ? 3 : 2;
                HostileDriverTest.await(() -> rx.usedIdx() == want, "the frames the guest may get");
                Thread.sleep(200); // nothing more comes

                List<String> got = new ArrayList<>();
                int[] u;
                while ((u = rx.nextUsed()) != null) {
                    long at = offs[u[0]];
                    int flags = d.mem.get(ValueLayout.JAVA_BYTE, at + VirtioNet.HDR_FLAGS);
                    int gso = d.mem.get(ValueLayout.JAVA_BYTE, at + VirtioNet.HDR_GSO_TYPE);
                    int etherType = Short.toUnsignedInt(d.mem.get(TapRxCutFrameTest.BE16, at + 12 + 12));
                    got.add(etherType == TapRxCutFrameTest.ETHERTYPE
                            ? "tag " + d.mem.get(ValueLayout.JAVA_BYTE, at + 12 + 14) + " flags " + flags + " gso " + gso
                            : "ethertype 0x" + Integer.toHexString(etherType) + " flags " + flags + " gso " + gso);
                }
                if (guestCsum) {
                    assertThat(got).as("a guest that negotiated GUEST_CSUM gets the partial checksum")
                            .containsExactly("tag 0 flags 0 gso 0", "ethertype 0x800 flags 1 gso 0", "tag 2 flags 0 gso 0");
                    assertThat(dev.counters().get(0).errors()).isZero();
                } else {
                    assertThat(got).as("what the guest got").containsExactly("tag 0 flags 0 gso 0", "tag 2 flags 0 gso 0");
                    assertThat(dev.counters().get(0).errors()).as("the frame it may not get, counted").isEqualTo(1);
                }
                assertThat(rx.usedIdx()).isEqualTo(want);
            } finally {
                backend.close();
            }
        }
    }

    /**
     * Every rule, through a port whose host writes the headers (as a TAP's does) handing frames with each flag and
     * gso_type to guests of four feature sets: the guest gets a frame whose header it negotiated, DATA_VALID (a
     * checksum the host checked, which a TAP sets whatever its offloads) cleared when it lacks GUEST_CSUM (its
     * checksum is right; the guest checks it itself), and never one with NEEDS_CSUM without GUEST_CSUM, a gso_type
     * without its GUEST_ feature, the ECN bit without GUEST_ECN, RSC_INFO, or a gso_type the device never offers:
     * those are dropped and counted as errors, and the frames after them arrive.
     */
    @ParameterizedTest(name = "features={0} buffer={1}")
    @CsvSource({"none,2048", "csum,2048", "csum+tso4,2048", "all,2048", "none,1024", "all,1024"})
    void theHeaderOfEachFrameIsOneTheGuestNegotiated(String set, int bufSize) throws Exception {
        long guest = switch (set) {
            case "none" -> 0;
            case "csum" -> VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM);
            case "csum+tso4" -> VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO4);
            default -> VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO4)
                    | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO6) | VirtioFeatures.bit(VirtioNet.F_GUEST_ECN)
                    | VirtioFeatures.bit(VirtioNet.F_GUEST_UFO);
        };
        boolean csum = VirtioFeatures.has(guest, VirtioNet.F_GUEST_CSUM);
        int[][] headers = { // flags, gso_type
            {0, 0}, {VirtioNet.HDR_F_DATA_VALID, 0}, {VirtioNet.HDR_F_NEEDS_CSUM, 0},
            {VirtioNet.HDR_F_NEEDS_CSUM, VirtioNet.GSO_TCPV4}, {VirtioNet.HDR_F_NEEDS_CSUM, VirtioNet.GSO_TCPV6},
            {VirtioNet.HDR_F_NEEDS_CSUM, VirtioNet.GSO_UDP},
            {VirtioNet.HDR_F_NEEDS_CSUM, VirtioNet.GSO_TCPV4 | VirtioNet.GSO_ECN},
            {4, 0}, {0, 5}, {0, 0x7f}, {0xff, 0xff}, {0, 0},
        };
        java.util.concurrent.ConcurrentLinkedQueue<byte[]> frames = new java.util.concurrent.ConcurrentLinkedQueue<>();
        OnePortBackend backend = new OnePortBackend("hdr") {
            @Override
            public long features() {
                return VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO4)
                        | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO6) | VirtioFeatures.bit(VirtioNet.F_GUEST_ECN)
                        | VirtioFeatures.bit(VirtioNet.F_GUEST_UFO);
            }

            @Override
            public Port open(int pair) {
                return new Port() {
                    @Override
                    public int readFd() {
                        return POLL;
                    }

                    @Override
                    public long send(IoVec frame) {
                        return frame.totalBytes();
                    }

                    @Override
                    public long receive(IoVec into) {
                        return receiveFrom(frames, into);
                    }

                    @Override
                    public boolean hostWritesHeaders() {
                        return true;
                    }

                    @Override
                    public void close() {}
                };
            }
        };
        try (NetDevice dev = new NetDevice(NetDevice.Config.of("hdr", 1), backend);
             VhostUserServer server = VhostUserServer.listen(dir.resolve("p.sock"), dev);
             EvilDriver d = new EvilDriver(server.path(), 1, 64, VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | guest,
                     1 << 20)) {
            EvilDriver.Ring rx = d.rx(0);
            long[] offs = new long[headers.length];
            for (int i = 0; i < offs.length; i++) {
                offs[i] = d.alloc(bufSize);
                rx.desc(i, d.gpa(offs[i]), bufSize, SplitRing.DESC_F_WRITE, 0);
                rx.offer(i);
            }
            List<Integer> want = new ArrayList<>();
            List<Integer> wantFlags = new ArrayList<>();
            for (int i = 0; i < headers.length; i++) {
                int flags = headers[i][0];
                int gso = headers[i][1];
                int type = gso & 0x7f;
                boolean ok = (flags & ~(VirtioNet.HDR_F_NEEDS_CSUM | VirtioNet.HDR_F_DATA_VALID)) == 0
                        && (csum || (flags & VirtioNet.HDR_F_NEEDS_CSUM) == 0)
                        && (type == 0 || type == VirtioNet.GSO_TCPV4 && VirtioFeatures.has(guest, VirtioNet.F_GUEST_TSO4)
                            || type == VirtioNet.GSO_TCPV6 && VirtioFeatures.has(guest, VirtioNet.F_GUEST_TSO6)
                            || type == VirtioNet.GSO_UDP && VirtioFeatures.has(guest, VirtioNet.F_GUEST_UFO))
                        && ((gso & VirtioNet.GSO_ECN) == 0 || VirtioFeatures.has(guest, VirtioNet.F_GUEST_ECN));
                if (ok) {
                    want.add(i);
                    wantFlags.add(csum ? flags : 0);
                }
                byte[] f = new byte[VirtioNet.HDR_SIZE + 60];
                f[VirtioNet.HDR_FLAGS] = (byte) flags;
                f[VirtioNet.HDR_GSO_TYPE] = (byte) gso;
                f[VirtioNet.HDR_SIZE + 14] = (byte) i;
                frames.add(f);
            }
            rx.kick();
            HostileDriverTest.await(() -> rx.usedIdx() == want.size() && frames.isEmpty(), "the frames the guest may get");
            Thread.sleep(100);
            List<Integer> got = new ArrayList<>();
            List<Integer> gotFlags = new ArrayList<>();
            int[] u;
            while ((u = rx.nextUsed()) != null) {
                assertThat(u[1]).isEqualTo(VirtioNet.HDR_SIZE + 60);
                got.add((int) d.mem.get(ValueLayout.JAVA_BYTE, offs[u[0]] + VirtioNet.HDR_SIZE + 14));
                gotFlags.add((int) d.mem.get(ValueLayout.JAVA_BYTE, offs[u[0]] + VirtioNet.HDR_FLAGS));
            }
            assertThat(got).as("the frames the guest got").isEqualTo(want);
            assertThat(gotFlags).as("their flags").isEqualTo(wantFlags);
            assertThat(dev.counters().get(0).errors()).as("the others, counted").isEqualTo(headers.length - want.size());
        }
    }
}
