package io.mqvirtio.vhostuser;

import static io.mqvirtio.vhostuser.BackendHarness.ALL_PF;
import static io.mqvirtio.vhostuser.RawPeer.state;
import static io.mqvirtio.vhostuser.RawPeer.u64;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.EventFd;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * Requests in an order QEMU does not send them, each well formed: the session's ring state must be what
 * vhost-user.rst says after each, whatever came before.
 */
@Timeout(30)
class SessionOrderTest {
    @TempDir
    Path dir;
    private RecordingDevice dev;
    private VhostUserServer server;

    @BeforeEach
    void start() {
        dev = new RecordingDevice(2);
        server = VhostUserServer.listen(dir.resolve("vu.sock"), dev);
    }

    @AfterEach
    void stop() {
        server.close();
    }

    /**
     * A reset disables every ring (vhost-user.rst, RESET_DEVICE: "disable all rings and reset all internal device
     * state to the initial state"). A ring restarted after it, without a SET_VRING_ENABLE, starts disabled: before,
     * its enable from before the reset outlived it (the next SET_FEATURES keeps an enable it was sent), and the
     * restarted ring took RX frames and sent TX ones that its frontend thought it had disabled. The status byte
     * is reset with the device.
     */
    @ParameterizedTest
    @EnumSource(value = Request.class, names = {"RESET_OWNER"}) // RESET_DEVICE is not offered (HostileFrontendTest)
    void aRingRestartedAfterAResetIsDisabledUntilEnabledAgain(Request reset) throws Exception {
        try (RawPeer fe = RawPeer.connect(server.path()); GuestRam ram = new GuestRam();
             EventFd k0 = EventFd.create(); EventFd c0 = EventFd.create(); EventFd k1 = EventFd.create()) {
            BackendHarness.negotiate(fe, ALL_PF);
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            BackendHarness.setupRing(fe, ram, 0, k0, c0);
            fe.ok(Request.SET_VRING_ENABLE, state(0, 1));
            fe.ok(Request.SET_STATUS, u64(0xf));
            assertThat(dev.running()).isEqualTo(1);
            assertThat(dev.enabled(0)).isTrue();

            fe.ok(reset, new byte[0]);
            assertThat(dev.running()).isZero();
            assertThat(fe.get(Request.GET_STATUS)).as("the status after the reset").isZero();
            fe.ok(Request.SET_FEATURES, u64(BackendHarness.FEATURES));
            dev.clear();
            fe.ok(Request.SET_VRING_KICK, u64(0), k1.fd());
            assertThat(dev.calls()).as("the restart").startsWith("start 0 disabled");
            fe.ok(Request.SET_VRING_ENABLE, state(0, 1));
            assertThat(dev.enabled(0)).isTrue();
            assertThat(dev.calls()).contains("enable 0");
        }
        BackendHarness.awaitNoSession(server);
        assertThat(dev.calls()).endsWith("stop 0", "reset");
    }

    /**
     * SET_VRING_BASE on a running ring is refused (the ring goes on where it is); GET_VRING_BASE twice stops the ring
     * once and answers the same base both times; the ring starts again only with a new kick.
     */
    @Test
    void aRunningRingKeepsItsBaseAndAStopAskedTwiceAnswersTheSame() throws Exception {
        try (RawPeer fe = RawPeer.connect(server.path()); GuestRam ram = new GuestRam();
             EventFd k0 = EventFd.create(); EventFd c0 = EventFd.create(); EventFd k1 = EventFd.create()) {
            BackendHarness.negotiate(fe, ALL_PF);
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            BackendHarness.setupRing(fe, ram, 0, k0, c0);
            assertThat(fe.ack(Request.SET_VRING_BASE, state(0, 7))).as("SET_VRING_BASE while it runs").isNotZero();
            assertThat(dev.running()).isEqualTo(1);
            dev.clear();
            fe.send(Request.GET_VRING_BASE, state(0, 0));
            RawPeer.Reply first = fe.expectReplyTo(Request.GET_VRING_BASE.id);
            fe.send(Request.GET_VRING_BASE, state(0, 0));
            RawPeer.Reply second = fe.expectReplyTo(Request.GET_VRING_BASE.id);
            assertThat(second.u64()).as("the second answer").isEqualTo(first.u64()).isEqualTo(0L);
            assertThat(dev.calls()).as("one stop").containsExactly("stop 0");
            assertThat(dev.running()).isZero();
            fe.ok(Request.SET_VRING_KICK, u64(0), k1.fd());
            assertThat(dev.running()).isEqualTo(1);
        }
    }

    /** After a reset the ring's old kick fd is let go: only a new SET_VRING_KICK starts the ring again. */
    @Test
    void aResetLetsGoOfTheKickFds() throws Exception {
        Request reset = Request.RESET_OWNER;
        try (RawPeer fe = RawPeer.connect(server.path()); GuestRam ram = new GuestRam();
             EventFd k0 = EventFd.create(); EventFd c0 = EventFd.create()) {
            BackendHarness.negotiate(fe, ALL_PF);
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            BackendHarness.setupRing(fe, ram, 0, k0, c0);
            Leaks before = Leaks.now();
            fe.ok(reset, new byte[0]);
            Leaks after = Leaks.settleTo(new Leaks(before.fds() - 1, before.memfdMaps(), List.of(), List.of()), 3000);
            assertThat(after.fds()).as("descriptors after the reset:%n%s", after.describe()).isEqualTo(before.fds() - 1);
            fe.ok(Request.SET_FEATURES, u64(BackendHarness.FEATURES));
            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            assertThat(dev.running()).as("rings running without a new kick").isZero();
        }
    }

    /**
     * A ring whose addresses the memory table does not hold yet, kicked: the SET_VRING_KICK fails, and the ring waits
     * for a table that holds it, as a ring does that a new table left out while it ran. Before, a later SET_MEM_TABLE
     * that held it left it stopped for good, kick fd and all (DPDK's vhost takes the rings again at each new table).
     */
    @Test
    void aRingKickedBeforeTheMemoryHoldsItStartsWithTheTableThatDoes() throws Exception {
        try (RawPeer fe = RawPeer.connect(server.path()); GuestRam ram = new GuestRam();
             EventFd k0 = EventFd.create(); EventFd c0 = EventFd.create()) {
            BackendHarness.negotiate(fe, ALL_PF);
            long skip = GuestRam.RING_SPAN; // ring 0 lives in the first slot
            fe.ok(Request.SET_MEM_TABLE, RawPeer.memTable(new RawPeer.Region(ram.gpa(skip), GuestRam.SIZE - skip,
                    ram.uva(skip), skip)), ram.fd());
            GuestRam.RingAt r = ram.ring(0, BackendHarness.RING);
            fe.ok(Request.SET_VRING_NUM, state(0, BackendHarness.RING));
            fe.ok(Request.SET_VRING_BASE, state(0, 0));
            fe.ok(Request.SET_VRING_ADDR, ram.vringAddr(r));
            fe.ok(Request.SET_VRING_CALL, u64(0), c0.fd());
            assertThat(fe.ack(Request.SET_VRING_KICK, u64(0), k0.fd())).as("a kick for a ring outside memory").isNotZero();
            assertThat(dev.running()).isZero();

            fe.ok(Request.SET_MEM_TABLE, ram.memTable(), ram.fd());
            assertThat(dev.running()).as("rings running once the memory holds them").isEqualTo(1);
        }
    }
}
