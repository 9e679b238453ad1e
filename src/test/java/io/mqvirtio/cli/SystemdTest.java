package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** What serve reads of systemd's socket activation variables (sd_listen_fds(3)), as systemd's own library reads them. */
class SystemdTest {
    static final long PID = 4242;

    /**
     * Variables meant for another process (LISTEN_PID not ours: left over from the service that started us, or from
     * a shell that ran one) are not looked at further, as sd_listen_fds(3) does: whatever LISTEN_FDS says, serve
     * starts with its own sockets. Before, a LISTEN_FDS that was no number refused serve's start (exit status 2),
     * --socket-path or not.
     */
    @Test
    void variablesForAnotherProcessAreIgnoredWhateverTheirCount() {
        for (String count : List.of("", "x", "-1", "99999999999", "2000", "1 2")) {
            assertThat(Systemd.listenFds(Map.of("LISTEN_PID", "1", "LISTEN_FDS", count, "LISTEN_FDNAMES", "a:b"), PID))
                    .as("LISTEN_FDS=%s for pid 1", count).isEmpty();
        }
    }

    @Test
    void variablesForThisProcessAreCheckedAndNamed() {
        assertThat(Systemd.listenFds(Map.of("LISTEN_PID", "4242", "LISTEN_FDS", "3", "LISTEN_FDNAMES", "vm1::unknown:x"),
                PID)).containsExactly(new Systemd.Passed(3, "vm1"), new Systemd.Passed(4, "fd:4"),
                new Systemd.Passed(5, "fd:5"));
        for (String count : List.of("", "x", "-1", "99999999999", "2000")) {
            assertThatThrownBy(() -> Systemd.listenFds(Map.of("LISTEN_PID", "4242", "LISTEN_FDS", count), PID))
                    .as("LISTEN_FDS=%s", count).isInstanceOf(UsageException.class).hasMessageContaining("LISTEN_FDS");
        }
        assertThatThrownBy(() -> Systemd.listenFds(Map.of("LISTEN_PID", "me", "LISTEN_FDS", "1"), PID))
                .isInstanceOf(UsageException.class).hasMessageContaining("LISTEN_PID");
        assertThat(Systemd.listenFds(Map.of("LISTEN_FDS", "1"), PID)).isEmpty();
    }

    /**
     * WATCHDOG_USEC as sd_watchdog_enabled(3) reads it (for us when WATCHDOG_PID is unset or ours), pinged every half
     * of it; the hostile values: 0 (off), 1 us (no spin: 10 ms at least), 2^64 - 1 (an hour at most), another
     * process's, not numbers.
     */
    @Test
    void watchdogIntervalsAreHalfTheTimeoutWithinBounds() {
        assertThat(Systemd.watchdogPingMillis(Map.of(), PID)).isZero();
        assertThat(Systemd.watchdogPingMillis(Map.of("WATCHDOG_USEC", "20000000"), PID)).isEqualTo(10_000);
        assertThat(Systemd.watchdogPingMillis(Map.of("WATCHDOG_USEC", "20000000", "WATCHDOG_PID", "4242"), PID))
                .isEqualTo(10_000);
        assertThat(Systemd.watchdogPingMillis(Map.of("WATCHDOG_USEC", "20000000", "WATCHDOG_PID", "1"), PID)).isZero();
        assertThat(Systemd.watchdogPingMillis(Map.of("WATCHDOG_USEC", "0"), PID)).isZero();
        assertThat(Systemd.watchdogPingMillis(Map.of("WATCHDOG_USEC", "1"), PID)).isEqualTo(Systemd.MIN_WATCHDOG_PING_MS);
        for (String huge : List.of("18446744073709551615", "9223372036854775807", "7200000001")) {
            assertThat(Systemd.watchdogPingMillis(Map.of("WATCHDOG_USEC", huge), PID)).as(huge)
                    .isEqualTo(Systemd.MAX_WATCHDOG_PING_MS);
        }
        for (String bad : List.of("", "x", "-1", "18446744073709551616")) {
            assertThat(Systemd.watchdogPingMillis(Map.of("WATCHDOG_USEC", bad), PID)).as(bad).isZero();
        }
        assertThat(Systemd.watchdogPingMillis(Map.of("WATCHDOG_USEC", "1000000", "WATCHDOG_PID", "me"), PID)).isZero();
    }
}
