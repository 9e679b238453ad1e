package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.nio.file.Path;
import java.util.concurrent.ThreadLocalRandom;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Host-side faults on the TAP, with the kernel's real TAP in a namespace of the test's own: a link that goes down
 * (writev answers EIO), a runt frame (EINVAL), the device deleted under the running device (EBADFD). Each costs the
 * frame it hit, counted as an error of that queue; the guest's ring goes on, and frames flow again once the link
 * is back. They used to break the TX ring for good. With TX by writev and through io_uring alike (there the TAP's
 * refusal comes back as the write's result, and io_uring stays in use).
 */
@Timeout(60)
class TapFaultTest {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);

    @TempDir
    Path dir;

    private int next; // next TX descriptor of the evil driver

    private NetDevice dev;

    private void send(EvilDriver d, int len) throws InterruptedException {
        int want = (d.tx(0).usedIdx() + 1) & 0xffff;
        long counted = handled();
        byte[] f = len >= 14 ? HostileDriverTest.frame(len, next) : new byte[len];
        HostileDriverTest.sendValid(d, 0, f, next++ % 64);
        HostileDriverTest.await(() -> d.tx(0).usedIdx() == want, "the frame to be used");
        // the worker counts a burst just after it publishes it: wait for the count too
        HostileDriverTest.await(() -> handled() == counted + 1, "the frame to be counted");
    }

    private long handled() {
        QueueCounters.Snapshot c = dev.counters().get(1);
        return c.packets() + c.errors() + c.drops();
    }

    @ParameterizedTest
    @EnumSource(value = TapBackend.TxMethod.class, names = {"WRITEV", "IO_URING"})
    void linkDownRuntFrameAndDeletedTapCostOneFrameEach(TapBackend.TxMethod how) throws Exception {
        String method = how == TapBackend.TxMethod.WRITEV ? "writev" : "io_uring";
        if (how == TapBackend.TxMethod.IO_URING) {
            org.junit.jupiter.api.Assumptions.assumeTrue(io.mqvirtio.linux.IoUring.unavailable() == null, "no io_uring");
        }
        String tap = "mqvf" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create()) {
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, how));
            ns.ip("link", "set", tap, "up");
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("tapfault", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("t.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
                this.dev = dev;
                QueueCounters.Snapshot c;
                send(d, 100);
                c = dev.counters().get(1);
                assertThat(c.packets()).isEqualTo(1);
                assertThat(c.errors()).isZero();

                ns.ip("link", "set", tap, "down");
                long hostDrops = hostRxDropped(ns, tap);
                for (int i = 0; i < 3; i++) {
                    send(d, 100); // EIO
                }
                c = dev.counters().get(1);
                assertThat(c.errors()).as("frames into a TAP that is down").isEqualTo(3);
                assertThat(c.packets()).isEqualTo(1);
                // the host counts each refused write as a drop of the TAP's: through io_uring one per frame, as we
                // do; by writev one more for the first (its write without errno capture, made again to learn why),
                // the later ones capture errno at once (before, every frame was written twice: the host counted 6)
                assertThat(hostRxDropped(ns, tap) - hostDrops).as("the host's drops for 3 frames refused")
                        .isEqualTo(how == TapBackend.TxMethod.WRITEV ? 4 : 3);

                ns.ip("link", "set", tap, "up");
                send(d, 100);
                send(d, 8); // shorter than an Ethernet header: EINVAL
                send(d, 100);
                c = dev.counters().get(1);
                assertThat(c.packets()).as("frames after the link came back").isEqualTo(3);
                assertThat(c.errors()).isEqualTo(4);

                ns.ip("link", "del", tap);
                for (int i = 0; i < 5; i++) {
                    send(d, 100); // EBADFD: every frame still used, none sent
                }
                c = dev.counters().get(1);
                assertThat(c.errors()).as("frames into a deleted TAP").isEqualTo(9);
                assertThat(d.tx(0).err.drain()).as("the error eventfd: no ring broke").isZero();
                assertThat(d.fe.getVringBase(1)).isEqualTo(next);
                assertThat(dev.ioMethods()).containsExactly("readv", method);
            }
        }
    }

    /** The TAP's rx_dropped (frames written into it that the host dropped), read in the test's namespace. */
    static long hostRxDropped(TestNetns ns, String tap) throws Exception {
        return Long.parseLong(ns.exec("cat", "/sys/class/net/" + tap + "/statistics/rx_dropped").trim());
    }

    /**
     * A frame from the host into RX buffers whose memory the frontend took away (it shrank its memory file under the
     * buffers it had posted): the TAP's read fails (EFAULT) and the kernel drops the frame. That is said: an RX error
     * of the queue, or its ring broken, as any touch of memory the frontend took away breaks it. Since the TAP read
     * went first without errno (137bd7a), a read that failed and left the queue empty was taken for an empty queue:
     * the frame gone, nothing counted, nothing logged.
     */
    @org.junit.jupiter.api.Test
    void aFrameIntoGuestMemoryThatShrankIsNotLostInSilence() throws Exception {
        String tap = "mqvf" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); java.lang.foreign.Arena a = java.lang.foreign.Arena.ofConfined()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            ns.ip("link", "set", tap, "up");
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("tapshrink", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("s.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20);
                 io.mqvirtio.linux.PacketSocket sock = ns.inside(() -> io.mqvirtio.linux.PacketSocket.open(tap))) {
                HostileDriverTest.postRx(d, 8); // 2048 bytes each: the worker reads the TAP straight into them
                d.memfd.truncate(d.dataOff); // the rings stay, the buffers go
                io.mqvirtio.linux.PacketSocket.Batch b = new io.mqvirtio.linux.PacketSocket.Batch(a, 1);
                b.set(0, TapRxCutFrameTest.frame(a, 100, 0));
                assertThat(sock.send(b, 1)).isEqualTo(1);
                boolean[] broke = new boolean[1];
                HostileDriverTest.await(() -> dev.counters().get(0).errors() > 0
                        || (broke[0] |= d.rx(0).err.drain() > 0), "the frame's loss said: an RX error, or the ring broken");
            }
        }
    }

    /**
     * Frames waiting in the TAP when the frontend took away the memory of the RX buffers it then posted: the first read
     * fails (EFAULT) and the kernel drops that frame. The read goes first without errno (IoVec.read) and, finding
     * the queue still readable, took the failure for a frame that came just after an empty read: it read again into
     * the same buffer, and again with errno, each read dropping one more frame of the faulting frontend's (3 of 3
     * here). Now the buffer is touched before it is read into again: memory taken away faults there, and the RX ring
     * breaks at the first frame, the others staying in the TAP for the frontend's next ring.
     */
    @org.junit.jupiter.api.Test
    void framesWaitingForBuffersWhoseMemoryIsGoneLoseOnlyTheFirst() throws Exception {
        String tap = "mqvf" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); java.lang.foreign.Arena a = java.lang.foreign.Arena.ofConfined()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            ns.ip("link", "set", tap, "up");
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("tapshrink3", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("s3.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20);
                 io.mqvirtio.linux.PacketSocket sock = ns.inside(() -> io.mqvirtio.linux.PacketSocket.open(tap))) {
                io.mqvirtio.linux.PacketSocket.Batch b = new io.mqvirtio.linux.PacketSocket.Batch(a, 3);
                for (int i = 0; i < 3; i++) {
                    b.set(i, TapRxCutFrameTest.frame(a, 100, i));
                }
                assertThat(sock.send(b, 3)).isEqualTo(3); // no RX buffers yet: they wait in the TAP
                Thread.sleep(100);
                d.memfd.truncate(d.dataOff); // the rings stay, the buffers go
                HostileDriverTest.postRx(d, 8);
                boolean[] broke = new boolean[1];
                HostileDriverTest.await(() -> dev.counters().get(0).errors() > 0
                        || (broke[0] |= d.rx(0).err.drain() > 0), "the frame's loss said: an RX error, or the ring broken");
                Thread.sleep(200);
                java.lang.foreign.MemorySegment buf = a.allocate(2048);
                int left = 0;
                while (io.mqvirtio.linux.IoVec.read(backend.queueFd(0), buf.address(), buf.byteSize()) > 0) {
                    left++;
                }
                assertThat(left).as("frames left in the TAP: only the first was read into the missing memory")
                        .isEqualTo(2);
            }
        }
    }

    /**
     * A frontend that disables and enables its rings in a loop detaches and attaches the pair's TAP queue each time.
     * Each of those was an INFO line of the TAP backend's own, outside the socket's allowance for a frontend's
     * ordinary lines (whose "ring enabled" and "disabled" notes say the same): one line per request, into the log
     * every VM shares. Now the session's notes are all that reaches INFO, within the allowance.
     */
    @org.junit.jupiter.api.Test
    void aQueueDetachedAndAttachedInALoopLogsWithinTheAllowance() throws Exception {
        String tap = "mqvf" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        int rounds = 100; // each detach waits for an RCU grace period in the kernel: some ms
        int allowance = 1000 + 8 * 2; // WarningLimit.NOTICES + NOTICES_PER_RING per ring of one pair
        try (TestNetns ns = TestNetns.create()) {
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            try (io.mqvirtio.vhostuser.LogCapture log = new io.mqvirtio.vhostuser.LogCapture("io.mqvirtio",
                         java.util.logging.Level.INFO).quiet();
                 NetDevice dev = new NetDevice(NetDevice.Config.of("toggle", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("e.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
                for (int i = 0; i < rounds; i++) {
                    for (boolean on : new boolean[] {false, true}) {
                        d.fe.setVringEnable(0, on);
                        d.fe.setVringEnable(1, on); // both off detaches the queue, either on attaches it
                    }
                }
                // the session's note of each request (within its allowance), the set-up's lines, nothing more
                assertThat(log.lines().size()).as("lines logged for %d requests that detach or attach the queue",
                        4 * rounds).isLessThanOrEqualTo(Math.min(4 * rounds, allowance) + 20);
            }
        }
    }
}
