package io.mqvirtio.net;

import static io.mqvirtio.net.HostileDriverTest.await;
import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.HostTap;
import io.mqvirtio.linux.IoUring;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.concurrent.ThreadLocalRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A host that limits the TAP's send buffer (TUNSETSNDBUF through a queue of its own, as QEMU's {@code sndbuf=} does)
 * while the frames the guest sent are still held on the host (here: bridged to a second TAP behind a slow token
 * bucket): writev answers EAGAIN, and the worker gives the chain back to retry. It must retry when the TAP has room
 * again, with no kick from the guest: a guest that queued its frames and waits for them to be used kicks no more.
 * The worker once waited for a kick only, and the TX ring stalled for good.
 */
@Timeout(60)
class TapTxBlockedTest {
    private static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);

    @TempDir
    Path dir;

    @Test
    void framesHeldBackByAFullSendBufferGoOutWhenItDrains() throws Exception {
        assumeTrue(TestNetns.isRoot(), "needs root");
        String id = Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        String tap = "mqvb" + id;
        String slow = "mqvs" + id;
        try (TestNetns ns = TestNetns.create()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            try (Tap slowQueue = ns.inside(() -> Tap.openQueue(slow, false));
                 Tap hostQueue = ns.inside(() -> Tap.openQueue(tap, true))) {
                bridgeToSlowTap(ns, tap, slow, "100kbit"); // a frame through every 80 ms
                try (NetDevice dev = new NetDevice(NetDevice.Config.of("tapblocked", 1), backend);
                     VhostUserServer server = VhostUserServer.listen(dir.resolve("b.sock"), dev);
                     EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
                    EvilDriver.Ring tx = d.tx(0);
                    HostileDriverTest.sendValid(d, 0, frame(0), 0);
                    await(() -> dev.counters().get(1).packets() == 1, "the first frame sent (our queue attached)");
                    HostTap.setSendBuffer(hostQueue, 8192); // the attached queues, ours among them

                    int frames = 24;
                    offer(d, 1, frames);
                    tx.kick(); // once: the guest now waits for its frames to be used
                    await(() -> tx.usedIdx() == 1 + frames, "every frame used without another kick");
                    QueueCounters.Snapshot c = dev.counters().get(1);
                    assertThat(c.packets()).as("all sent, none dropped").isEqualTo(1 + frames);
                    assertThat(c.drops() + c.errors()).isZero();
                    assertThat(tx.err.drain()).as("no ring broke").isZero();
                }
            } finally {
                backend.close();
            }
        }
    }

    /**
     * The same through io_uring, with the host holding the frames for good (a bucket that lets 1 byte a second
     * through). A TAP write that finds no room completes with EAGAIN only if it says RWF_NOWAIT: without, io_uring
     * armed a poll and retried it when the TAP had room, and the worker waited in io_uring_enter for that completion,
     * unable to take a command (the device was declared dead after 10 s). Frames the TAP has no room for are dropped
     * and counted (frames after them in the batch may have gone out already), and the worker stays free.
     */
    @Test
    void uringWritesTheTapHasNoRoomForAreDroppedAndTheWorkerNeverWaits() throws Exception {
        assumeTrue(TestNetns.isRoot() && IoUring.unavailable() == null, "needs root and io_uring");
        String id = Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        String tap = "mqvb" + id;
        String slow = "mqvs" + id;
        try (TestNetns ns = TestNetns.create()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.IO_URING));
            try (Tap slowQueue = ns.inside(() -> Tap.openQueue(slow, false));
                 Tap hostQueue = ns.inside(() -> Tap.openQueue(tap, true))) {
                bridgeToSlowTap(ns, tap, slow, "8bit");
                try (NetDevice dev = new NetDevice(NetDevice.Config.of("uringblocked", 1), backend);
                     VhostUserServer server = VhostUserServer.listen(dir.resolve("u.sock"), dev);
                     EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
                    try {
                        EvilDriver.Ring tx = d.tx(0);
                        HostileDriverTest.sendValid(d, 0, frame(0), 0);
                        await(() -> dev.counters().get(1).packets() == 1, "the first frame sent (our queue attached)");
                        HostTap.setSendBuffer(hostQueue, 8192);

                        int frames = 24;
                        offer(d, 1, frames);
                        tx.kick();
                        await(() -> tx.usedIdx() == 1 + frames, "every frame used");
                        await(() -> {
                            QueueCounters.Snapshot c = dev.counters().get(1);
                            return c.packets() + c.drops() == 1 + frames;
                        }, "every frame counted");
                        assertThat(dev.counters().get(1).drops()).as("frames the TAP had no room for").isPositive();
                        dev.setMtu(1400); // a command: the worker takes it
                        assertThat(dev.deadReason()).isNull();
                        assertThat(dev.ioMethods()).containsExactly("readv", "io_uring");
                        assertThat(tx.err.drain()).as("no ring broke").isZero();
                    } finally {
                        ns.exec("tc", "qdisc", "del", "dev", slow, "root"); // what the host held goes
                    }
                }
            } finally {
                backend.close();
            }
        }
    }

    /**
     * A bridge from {@code tap} to {@code slow}: our frames go to an unknown MAC, so the bridge floods them to the slow
     * TAP, whose token bucket ({@code rate}) holds them, and the send buffer they are charged to, until it lets them go.
     */
    private static void bridgeToSlowTap(TestNetns ns, String tap, String slow, String rate) throws Exception {
        ns.ip("link", "add", "br0", "type", "bridge");
        ns.ip("link", "set", tap, "master", "br0");
        ns.ip("link", "set", slow, "master", "br0");
        ns.exec("tc", "qdisc", "add", "dev", slow, "root", "tbf", "rate", rate, "burst", "1600", "limit", "1000000");
        for (String dev : new String[] {"br0", tap, slow}) {
            ns.ip("link", "set", dev, "up");
        }
    }

    /** Offers frames {@code first} .. {@code first + n - 1} on TX, descriptor i holding frame i; no kick. */
    private static void offer(EvilDriver d, int first, int n) {
        EvilDriver.Ring tx = d.tx(0);
        for (int i = first; i < first + n; i++) {
            long off = d.alloc(12 + 1000);
            d.mem.asSlice(off, 12).fill((byte) 0);
            MemorySegment.copy(MemorySegment.ofArray(frame(i)), 0, d.mem, off + 12, 1000);
            tx.desc(i, d.gpa(off), 12 + 1000, 0, 0);
            tx.offer(i);
        }
    }

    /** 1000 bytes to an unknown unicast MAC (the bridge floods it), local experimental ethertype, marked {@code seq}. */
    private static byte[] frame(int seq) {
        byte[] f = new byte[1000];
        for (int i = 0; i < f.length; i++) {
            f[i] = (byte) (seq * 31 + i);
        }
        byte[] head = {0x02, 0, 0, 0, 0x5e, (byte) 0x99, 0x02, 0, 0, 0, 0x5e, 0x01, (byte) 0x88, (byte) 0xb5};
        System.arraycopy(head, 0, f, 0, head.length);
        return f;
    }
}
