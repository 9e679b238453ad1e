package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.MemFd;
import io.mqvirtio.linux.PacketSocket;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.vhostuser.LogCapture;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import java.util.logging.Level;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A TUNSETQUEUE that fails for a passing reason (ENOMEM, EBUSY: the kernel's, which a test cannot make it answer on
 * demand, so the port of a real TAP refuses the first attaches of pair 1 with ENOMEM and then does the real one) used
 * to leave the pair's queue detached until the guest changed its pairs again: the kernel steered no flow to a pair the
 * guest uses. Now the worker tries it again after 1 s, then 2, 4, ... up to 32 s while it fails (each try takes the
 * rtnl lock), counted as one error and logged as one line each way.
 */
@Timeout(30)
class TapAttachRetryTest {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);

    @TempDir
    Path dir;

    @Test
    void anAttachThatFailedForAPassingReasonIsRetriedAtABoundedRate() throws Exception {
        String tap = "mqva" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); LogCapture log = new LogCapture("io.mqvirtio.net", Level.INFO).quiet()) {
            TapBackend tapBackend = ns.inside(() -> TapBackend.open(tap, 2, TapBackend.TxMethod.WRITEV));
            AtomicInteger refusals = new AtomicInteger();
            AtomicInteger tries = new AtomicInteger();
            PacketBackend backend = new PacketBackend() {
                @Override
                public int maxPairs() {
                    return tapBackend.maxPairs();
                }

                @Override
                public long features() {
                    return tapBackend.features();
                }

                @Override
                public Port open(int pair) {
                    Port real = tapBackend.open(pair);
                    return pair == 0 ? real : new RefusingPort(real, refusals, tries);
                }

                @Override
                public String describe() {
                    return tapBackend.describe();
                }

                @Override
                public void close() {
                    tapBackend.close();
                }
            };
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("retry", 2), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("a.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 2, 64, FEATURES, 1 << 20)) {
                assertThat(QueuePairChurnTest.attachedQueues(ns, tap)).isEqualTo(2);
                d.fe.setVringEnable(2, false);
                d.fe.setVringEnable(3, false);
                assertThat(QueuePairChurnTest.attachedQueues(ns, tap)).isEqualTo(1);
                int before = log.lines().size();
                tries.set(0);
                refusals.set(2); // the next two attaches: ENOMEM
                d.fe.setVringEnable(2, true);
                d.fe.setVringEnable(3, true);
                assertThat(QueuePairChurnTest.attachedQueues(ns, tap)).as("refused: still detached").isEqualTo(1);
                long start = System.nanoTime();
                long deadline = start + TimeUnit.SECONDS.toNanos(8);
                while (QueuePairChurnTest.attachedQueues(ns, tap) != 2 && System.nanoTime() < deadline) {
                    Thread.sleep(100);
                }
                assertThat(QueuePairChurnTest.attachedQueues(ns, tap)).as("attached by a retry").isEqualTo(2);
                assertThat(System.nanoTime() - start).as("after 1 s, then 2 s more: not at once")
                        .isGreaterThan(TimeUnit.MILLISECONDS.toNanos(2500));
                assertThat(tries.get()).as("the first attempt and two retries").isEqualTo(3);
                long errors = dev.counters().get(2).errors() + dev.counters().get(3).errors();
                assertThat(errors).as("one error for the episode").isEqualTo(1);
                List<String> lines = log.lines().subList(before, log.lines().size());
                assertThat(lines).hasSize(2);
                assertThat(lines.get(0)).contains("cannot attach");
                assertThat(lines.get(1)).contains("attached again").contains("after 2 retries");
                Thread.sleep(1500);
                assertThat(tries.get()).as("no more tries once attached").isEqualTo(3);
            }
        }
    }

    /**
     * A TAP queue reopened (its device deleted and created again: {@link Port#upkeep} answers true, a new descriptor)
     * whose registration in the worker's epoll the kernel refuses (ENOMEM, ENOSPC: the user's epoll watches; here the
     * port names a memfd for the moment, which epoll refuses with EPERM). The worker used to log it and never watch
     * the port again: the upkeep said true once, and the host's frames for the guest waited in the TAP for good (RX
     * wakes on the port's edge only). Now the registration is tried again at each upkeep.
     */
    @Test
    void aReopenedQueueWhoseWatchFailedIsWatchedAgainAtTheNextUpkeep() throws Exception {
        String tap = "mqvw" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); LogCapture log = new LogCapture("io.mqvirtio.net", Level.INFO).quiet();
             MemFd unwatchable = MemFd.create("unwatchable", 4096);
             java.lang.foreign.Arena a = java.lang.foreign.Arena.ofConfined()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend tapBackend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            ns.ip("link", "set", tap, "up");
            AtomicBoolean reopen = new AtomicBoolean();
            PacketBackend backend = reopening("rewatch", tapBackend, reopen, unwatchable.fd(), 500, false);
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("rewatch", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("w.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20);
                 PacketSocket sock = ns.inside(() -> PacketSocket.open(tap))) {
                HostileDriverTest.postRx(d, 8);
                PacketSocket.Batch b = new PacketSocket.Batch(a, 1);
                b.set(0, TapRxCutFrameTest.frame(a, 100, 0));
                assertThat(sock.send(b, 1)).isEqualTo(1);
                HostileDriverTest.await(() -> d.rx(0).usedIdx() == 1, "the first frame received");

                reopen.set(true); // the next upkeep reopens, and the new descriptor cannot be watched for 0.5 s
                HostileDriverTest.await(() -> !reopen.get(), "the upkeep to reopen the queue");
                HostileDriverTest.await(() -> log.lines().stream().anyMatch(l -> l.contains("Operation not permitted")),
                        "the refused registration logged");
                Thread.sleep(1500); // past the next upkeep
                assertThat(sock.send(b, 1)).isEqualTo(1);
                HostileDriverTest.await(() -> d.rx(0).usedIdx() == 2, "the frame after the reopen received");
                assertThat(dev.counters().get(0).errors()).as("no frame was lost to it").isZero();
            }
        }
    }

    /**
     * As above, with the guest sending while the reopened queue is not watched yet and the TAP has no room (here the
     * port says so while its descriptor cannot be watched): TX waits for room, and with no edge to wait for (the
     * descriptor is not in the epoll), waits for the upkeep that watches it. Before, each wait for room tried to re-arm
     * a descriptor the epoll did not hold, failed, and counted a TX error for it ("frame dropped"; none was: the chain
     * was given back), and TX went round again at the next kick.
     */
    @Test
    void aWaitForRoomOnAnUnwatchedQueueWaitsForTheUpkeepAndCountsNothing() throws Exception {
        String tap = "mqvf" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); LogCapture log = new LogCapture("io.mqvirtio.net", Level.INFO).quiet();
             MemFd unwatchable = MemFd.create("unwatchable", 4096)) {
            TapBackend tapBackend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            ns.ip("link", "set", tap, "up");
            AtomicBoolean reopen = new AtomicBoolean();
            PacketBackend backend = reopening("fullwhile", tapBackend, reopen, unwatchable.fd(), 2000, true);
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("fullwhile", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("f.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
                reopen.set(true); // the next upkeep reopens; the new descriptor cannot be watched, nor take frames, 2 s
                HostileDriverTest.await(() -> !reopen.get(), "the upkeep to reopen the queue");
                EvilDriver.Ring tx = d.tx(0);
                long off = d.alloc(VirtioNet.HDR_SIZE + 60);
                d.mem.asSlice(off, VirtioNet.HDR_SIZE + 60).fill((byte) 0);
                d.mem.asSlice(off + VirtioNet.HDR_SIZE, 6).fill((byte) 0xff);
                tx.desc(0, d.gpa(off), VirtioNet.HDR_SIZE + 60, 0, 0);
                tx.offer(0);
                tx.kick();
                Thread.sleep(200);
                tx.kick(); // a second try while it waits
                HostileDriverTest.await(() -> tx.usedIdx() == 1, "the frame sent once the queue is watched");
                assertThat(dev.counters().get(1).errors()).as("TX errors: no frame was lost").isZero();
                assertThat(dev.counters().get(1).packets()).as("TX packets").isEqualTo(1);
            }
        }
    }

    /**
     * Another holder of our queue's file (a duplicate taken with pidfd_getfd, or inherited) detaches it (TUNSETQUEUE
     * acts on the file, whoever calls it): writes still go, but the kernel steers no frame for the guest to it (with
     * no queue attached it drops them). The worker held it attached and never looked: the guest's RX on that pair was
     * cut until it changed its pairs. Now the probe reads each attached queue's flags (IFF_DETACH_QUEUE) each second
     * and the worker attaches it again, one line.
     */
    @Test
    void aQueueDetachedByAnotherHolderOfItsFileIsAttachedAgain() throws Exception {
        String tap = "mqvo" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); LogCapture log = new LogCapture("io.mqvirtio", Level.INFO).quiet();
             java.lang.foreign.Arena a = java.lang.foreign.Arena.ofConfined()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend backend = ns.inside(() -> TapBackend.open(tap, 1, TapBackend.TxMethod.WRITEV));
            ns.ip("link", "set", tap, "up");
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("outside", 1), backend);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("o.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20);
                 PacketSocket sock = ns.inside(() -> PacketSocket.open(tap))) {
                HostileDriverTest.postRx(d, 8);
                PacketSocket.Batch b = new PacketSocket.Batch(a, 1);
                b.set(0, TapRxCutFrameTest.frame(a, 100, 0));
                assertThat(sock.send(b, 1)).isEqualTo(1);
                HostileDriverTest.await(() -> d.rx(0).usedIdx() == 1, "the first frame received");

                backend.queueFd(0).detach(); // what another holder of the file can do
                assertThat(backend.queueFd(0).flags() & Tap.IFF_DETACH_QUEUE).isNotZero();
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
                while ((backend.queueFd(0).flags() & Tap.IFF_DETACH_QUEUE) != 0 && System.nanoTime() < deadline) {
                    Thread.sleep(50);
                }
                assertThat(sock.send(b, 1)).isEqualTo(1);
                HostileDriverTest.await(() -> d.rx(0).usedIdx() == 2, "the frame after the detach received");
                assertThat(log.lines().stream().filter(l -> l.contains("detached by another holder")))
                        .as("one line").hasSize(1);
                assertThat(backend.queuesReattached()).isEqualTo(1);
            }
        }
    }

    /** A backend of one {@link ReopeningPort} on {@code tapBackend}'s queue (closing it closes the TAP's). */
    private static PacketBackend reopening(String name, TapBackend tapBackend, AtomicBoolean reopen, int unwatchable,
                                           long forMillis, boolean full) {
        AtomicLong unwatchableUntil = new AtomicLong(System.nanoTime());
        return new OnePortBackend(name) {
            @Override
            public Port open(int pair) {
                return new ReopeningPort(tapBackend.open(pair), reopen, unwatchableUntil, unwatchable, forMillis, full);
            }

            @Override
            public void close() {
                tapBackend.close();
            }
        };
    }

    /**
     * A real TAP queue's port whose upkeep says, when {@code reopen} is set, that it was reopened; it then names {@code
     * unwatchable} (a descriptor epoll refuses) for {@code forMillis} ms, with no room for frames meanwhile if {@code
     * full}.
     */
    private record ReopeningPort(Port real, AtomicBoolean reopen, AtomicLong unwatchableUntil, int unwatchable,
                                 long forMillis, boolean full) implements ForwardingPort {
        @Override
        public boolean upkeep() {
            boolean r = real.upkeep();
            if (reopen.get()) {
                unwatchableUntil.set(System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(forMillis));
                reopen.set(false);
                return true;
            }
            return r;
        }

        private boolean unwatched() {
            return System.nanoTime() - unwatchableUntil.get() < 0;
        }

        @Override
        public int readFd() {
            return unwatched() ? unwatchable : real.readFd();
        }

        @Override
        public long send(IoVec frame) {
            return full && unwatched() ? -1 : real.send(frame);
        }

        @Override
        public long send(long address, long length, IoVec scratch) {
            return full && unwatched() ? -1 : real.send(address, length, scratch);
        }
    }

    /** A real TAP queue's port whose next attaches fail with ENOMEM while {@code refusals} is above 0. */
    private record RefusingPort(Port real, AtomicInteger refusals, AtomicInteger tries) implements ForwardingPort {
        @Override
        public void setActive(boolean active) {
            if (active) {
                tries.incrementAndGet();
                if (refusals.getAndUpdate(n -> Math.max(0, n - 1)) > 0) {
                    throw new ErrnoException("ioctl(TUNSETQUEUE, IFF_ATTACH_QUEUE)", ErrnoException.ENOMEM);
                }
            }
            real.setActive(active);
        }
    }
}
