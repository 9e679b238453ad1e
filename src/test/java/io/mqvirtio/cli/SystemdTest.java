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
}
