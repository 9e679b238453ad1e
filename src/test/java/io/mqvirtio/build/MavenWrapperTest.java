package io.mqvirtio.build;

import static org.assertj.core.api.Assertions.assertThat;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * {@code ./mvnw} on a machine whose default java is older than the 25 the project needs (Debian 12's is 17): it finds
 * JDK 25 itself, as {@code bin/mqvirtio} does, instead of failing on an option of {@code .mvn/jvm.config} that only
 * JDK 24 and later know. Run with an old JDK as JAVA_HOME and first on PATH when the machine has one, else with
 * neither set.
 */
class MavenWrapperTest {
    @Test
    @Timeout(120)
    void findsJdk25WhateverTheDefaultJavaIs() throws Exception {
        Path old = olderJdk();
        ProcessBuilder pb = new ProcessBuilder("./mvnw", "-o", "-v").redirectErrorStream(true);
        Map<String, String> env = pb.environment();
        env.remove("JAVA_HOME");
        env.put("PATH", "/usr/bin:/bin");
        if (old != null) {
            env.put("JAVA_HOME", old.toString());
            env.put("PATH", old.resolve("bin") + ":/usr/bin:/bin");
        }
        Process p = pb.start();
        p.getOutputStream().close();
        assertThat(p.waitFor(100, TimeUnit.SECONDS)).isTrue();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertThat(p.exitValue()).as(out).isZero();
        assertThat(out).as("with JAVA_HOME=%s", old).containsPattern("Java version: (2[5-9]|[3-9][0-9])");
    }

    /** A JDK below 25 under /usr/lib/jvm, or null. */
    private static Path olderJdk() throws IOException {
        Path jvm = Path.of("/usr/lib/jvm");
        if (!Files.isDirectory(jvm)) {
            return null;
        }
        try (Stream<Path> s = Files.list(jvm)) {
            return s.filter(d -> Files.isExecutable(d.resolve("bin/java")) && Files.isExecutable(d.resolve("bin/javac")))
                    .filter(d -> major(d) > 0 && major(d) < 25).findFirst().orElse(null);
        }
    }

    private static int major(Path jdk) {
        try {
            for (String line : Files.readAllLines(jdk.resolve("release"))) {
                if (line.startsWith("JAVA_VERSION=\"")) {
                    String v = line.substring(14).split("[.\"]")[0];
                    return Integer.parseInt(v);
                }
            }
        } catch (IOException | NumberFormatException e) {
            return -1;
        }
        return -1;
    }
}
