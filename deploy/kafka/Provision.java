// Create the local stack's SCRAM users and ACLs in one JVM (`java Provision.java`, Kafka's
// client jars on the classpath). Reads from stdin, so no password is ever on a command line:
//   connection properties (key=value), an empty line, then lines of
//   user <name> <password>
//   acl <principal> <resource type> <name> <pattern type> <operation>
// Users are upserted; ALLOW bindings not listed are deleted, so the cluster holds exactly the
// table's rules (streamledger/kafka/acls.py).
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Set;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class Provision {
    public static void main(String[] args) throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        Properties props = new Properties();
        String line;
        while ((line = in.readLine()) != null && !line.isEmpty()) {
            int eq = line.indexOf('=');
            props.put(line.substring(0, eq), line.substring(eq + 1));
        }
        List<UserScramCredentialAlteration> users = new ArrayList<>();
        Set<AclBinding> wanted = new HashSet<>();
        while ((line = in.readLine()) != null) {
            String[] w = line.split(" ");
            if (w[0].equals("user")) {
                users.add(new UserScramCredentialUpsertion(
                    w[1], new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), w[2]));
            } else if (w[0].equals("acl")) {
                wanted.add(new AclBinding(
                    new ResourcePattern(ResourceType.fromString(w[2]), w[3], PatternType.fromString(w[4])),
                    new AccessControlEntry(w[1], "*", AclOperation.fromString(w[5]), AclPermissionType.ALLOW)));
            }
        }
        try (Admin admin = Admin.create(props)) {
            if (!users.isEmpty()) {
                admin.alterUserScramCredentials(users).all().get();
            }
            Collection<AclBinding> present = admin.describeAcls(AclBindingFilter.ANY).values().get();
            List<AclBindingFilter> stale = new ArrayList<>();
            for (AclBinding binding : present) {
                if (!wanted.contains(binding)) {
                    stale.add(binding.toFilter());
                }
            }
            if (!stale.isEmpty()) {
                admin.deleteAcls(stale).all().get();
            }
            List<AclBinding> missing = new ArrayList<>(wanted);
            missing.removeAll(present);
            if (!missing.isEmpty()) {
                admin.createAcls(missing).all().get();
            }
            System.out.println("users " + users.size() + ", acls " + wanted.size() + " (" + missing.size()
                + " added, " + stale.size() + " removed)");
        }
    }
}
