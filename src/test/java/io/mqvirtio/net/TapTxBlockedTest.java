package io.mqvirtio.net;

import static io.mqvirtio.net.HostileDriverTest.await;
import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.HostTap;
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
                // our frames go to an unknown MAC: the bridge floods them to the slow TAP, whose qdisc holds them (and
                // so the send buffer they are charged to) and lets one through every 80 ms
                ns.ip("link", "add", "br0", "type", "bridge");
                ns.ip("link", "set", tap, "master", "br0");
                ns.ip("link", "set", slow, "master", "br0");
                ns.exec("tc", "qdisc", "add", "dev", slow, "root", "tbf", "rate", "100kbit", "burst", "1600",
                        "limit", "1000000");
                for (String dev : new String[] {"br0", tap, slow}) {
                    ns.ip("link", "set", dev, "up");
                }
                try (NetDevice dev = new NetDevice(NetDevice.Config.of("tapblocked", 1), backend);
                     VhostUserServer server = VhostUserServer.listen(dir.resolve("b.sock"), dev);
                     EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
                    EvilDriver.Ring tx = d.tx(0);
                    HostileDriverTest.sendValid(d, 0, frame(0), 0);
                    await(() -> dev.counters().get(1).packets() == 1, "the first frame sent (our queue attached)");
                    HostTap.setSendBuffer(hostQueue, 8192); // the attached queues, ours among them

                    int frames = 24;
                    for (int i = 1; i <= frames; i++) {
                        long off = d.alloc(12 + 1000);
                        d.mem.asSlice(off, 12).fill((byte) 0);
                        MemorySegment.copy(MemorySegment.ofArray(frame(i)), 0, d.mem, off + 12, 1000);
                        tx.desc(i, d.gpa(off), 12 + 1000, 0, 0);
                        tx.offer(i);
                    }
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
