package io.mqvirtio.net;

import static io.mqvirtio.virtio.SplitRing.*;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.cli.Launcher;
import io.mqvirtio.peers.Guest;
import io.mqvirtio.peers.PeerLab;
import io.mqvirtio.peers.Peers;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Two VMs on one {@code mqvirtio serve} process: a real Linux guest on the first socket pings the host side of
 * its TAP from every vCPU, while the second socket's frontend misbehaves without pause — floods its device with
 * frames, breaks its rings with crafted descriptors, storms it with kicks, reconnects again and again. The guest
 * must lose no ping, and the daemon must still serve both sockets at the end.
 */
@Tag("peer")
class ServeIsolationTest {
    @TempDir
    Path dir;

    @Test
    @Timeout(300)
    void oneVmMisbehavesTheOtherLosesNothing() throws Exception {
        Path good = dir.resolve("good.sock");
        Path bad = dir.resolve("bad.sock");
        try (PeerLab lab = PeerLab.open(dir)) {
            String tap = lab.persistentTap("mqvi");
            Launcher.Run serve = lab.serve("serve", "--vm", "socket-path=" + good + ",queues=2,tap=" + tap + ",name=good",
                    "--vm", "socket-path=" + bad + ",queues=2,loopback,name=bad");
            serve.awaitErr("listening on .*good\\.sock", 30_000);
            serve.awaitErr("listening on .*bad\\.sock", 30_000);
            AtomicBoolean stop = new AtomicBoolean();
            AtomicLong attacks = new AtomicLong();
            AtomicLong floodFrames = new AtomicLong();
            Thread hostile = null;
            Guest g;
            try {
                g = lab.guest("vm").vhostUser(good).queues(2).smp(2).script("ping.sh").timeout(200)
                        .arg("ip", lab.guestCidr()).arg("peer", lab.host()).arg("count", 60).arg("timeout", 150).start();
                g.awaitLine("MQV-READY", 90);
                hostile = Thread.ofPlatform().name("bad-vm").start(() -> misbehave(bad, stop, attacks, floodFrames));
                assertThat(g.awaitExit(200)).as("guest finished%s", g.context()).isTrue();
            } finally {
                stop.set(true);
                if (hostile != null) {
                    hostile.join(30_000);
                }
            }
            Map<String, String> r = g.results();
            String context = g.context() + "\n--- serve ---\n" + Peers.tail(serve.err(), 30);
            assertThat(attacks.get()).as("attacks made on the other VM's device").isGreaterThan(3);
            assertThat(floodFrames.get()).as("frames flooded into the other VM's device").isPositive();
            assertThat(r.get("sent")).as(context).isNotNull();
            assertThat(r.get("received")).as("pings answered, none lost%s", context).isEqualTo(r.get("sent"));
            assertThat(Integer.parseInt(r.get("sent"))).isEqualTo(120);
            // the daemon still serves the misbehaving VM's socket, with a well-behaved driver (once the bad VM's
            // last session has ended: while one runs, a second frontend is turned away)
            try (NetDriver nic = connectWhenFree(bad); Arena a = Arena.ofConfined()) {
                HostileDriverTest.assertEchoes(nic.pair(1), a);
            }
            assertThat(serve.process().isAlive()).isTrue();
        }
    }

    private static NetDriver connectWhenFree(Path sock) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (true) {
            try {
                return NetDriver.connect(sock, NetDriver.Options.pairs(2));
            } catch (io.mqvirtio.vhostuser.VhostUserException e) {
                if (System.nanoTime() > deadline) {
                    throw e;
                }
                Thread.sleep(50);
            }
        }
    }

    /** The bad VM: rounds of flooding, ring breaking and kick storms, each on a new connection. */
    private static void misbehave(Path sock, AtomicBoolean stop, AtomicLong attacks, AtomicLong flood) {
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ)
                | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF);
        int round = 0;
        while (!stop.get()) {
            try {
                switch (round++ % 3) {
                    case 0 -> { // flood: as fast as the device takes frames, for a second
                        try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(2)); Arena a = Arena.ofConfined()) {
                            MemorySegment[] burst = new MemorySegment[32];
                            for (int i = 0; i < burst.length; i++) {
                                burst[i] = NetDriverContract.frame(a, 0, i, 1400);
                            }
                            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(1);
                            while (System.nanoTime() < end && !stop.get()) {
                                flood.addAndGet(nic.pair(0).send(burst, 0, burst.length));
                                nic.pair(0).receive(burst, new int[32], 32); // drain the echoes into the same frames
                            }
                        }
                    }
                    case 1 -> { // broken rings: a descriptor loop on TX, an avail jump on RX
                        try (EvilDriver d = new EvilDriver(sock, 2, 64, features, 1 << 20)) {
                            long off = d.alloc(64);
                            d.tx(0).desc(0, d.gpa(off), 16, DESC_F_NEXT, 1);
                            d.tx(0).desc(1, d.gpa(off + 16), 16, DESC_F_NEXT, 0);
                            d.tx(0).offer(0);
                            d.tx(0).kick();
                            d.rx(1).setAvailIdx(1000);
                            d.rx(1).kick();
                            Thread.sleep(200);
                        }
                    }
                    default -> { // a kick storm with nothing posted
                        try (EvilDriver d = new EvilDriver(sock, 2, 64, features, 1 << 20)) {
                            long end = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(700);
                            while (System.nanoTime() < end) {
                                for (EvilDriver.Ring r : d.rings) {
                                    r.kick();
                                }
                            }
                        }
                    }
                }
                attacks.incrementAndGet();
            } catch (VhostUserException | IllegalStateException e) {
                // the previous connection may still be closing: the device takes one frontend at a time
                sleep(100);
            } catch (InterruptedException e) {
                return;
            }
        }
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
