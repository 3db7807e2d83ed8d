package main

// Minimal Go types of the custom resources the chart renders and the examples use: only the fields
// used there, decoded strictly like the Kubernetes kinds (a field not listed here is an error).
// Free-form maps (a broker's or a topic's `config`, mongod options, a ServiceMonitor's tlsConfig)
// are passed through unchecked, as the operators themselves take them.

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ServiceMonitor is prometheus-operator's monitoring.coreos.com/v1 ServiceMonitor.
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string         `json:"port"`
			Path          string         `json:"path,omitempty"`
			Interval      string         `json:"interval,omitempty"`
			Scheme        string         `json:"scheme,omitempty"`
			TLSConfig     map[string]any `json:"tlsConfig,omitempty"`
			Authorization *struct {
				Type        string                   `json:"type"`
				Credentials corev1.SecretKeySelector `json:"credentials"`
			} `json:"authorization,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// Kafka is Strimzi's kafka.strimzi.io/v1 Kafka (KRaft: its nodes come from KafkaNodePools).
type Kafka struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Kafka struct {
			Version   string `json:"version,omitempty"`
			Listeners []struct {
				Name           string `json:"name"`
				Port           int32  `json:"port"`
				Type           string `json:"type"`
				TLS            bool   `json:"tls"`
				Authentication *struct {
					Type string `json:"type"`
				} `json:"authentication,omitempty"`
			} `json:"listeners"`
			Authorization *struct {
				Type       string   `json:"type"`
				SuperUsers []string `json:"superUsers,omitempty"`
			} `json:"authorization,omitempty"`
			Config map[string]any `json:"config,omitempty"`
			Rack   *struct {
				TopologyKey string `json:"topologyKey"`
			} `json:"rack,omitempty"`
		} `json:"kafka"`
		EntityOperator struct {
			TopicOperator *struct {
				Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
			} `json:"topicOperator,omitempty"`
			UserOperator *struct {
				Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
			} `json:"userOperator,omitempty"`
		} `json:"entityOperator"`
	} `json:"spec"`
}

// KafkaNodePool is Strimzi's kafka.strimzi.io/v1 KafkaNodePool.
type KafkaNodePool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Replicas int32    `json:"replicas"`
		Roles    []string `json:"roles"`
		Storage  struct {
			Type    string `json:"type"`
			Volumes []struct {
				ID            int32  `json:"id"`
				Type          string `json:"type"`
				Size          string `json:"size,omitempty"`
				Class         string `json:"class,omitempty"`
				KraftMetadata string `json:"kraftMetadata,omitempty"`
				DeleteClaim   bool   `json:"deleteClaim,omitempty"`
			} `json:"volumes"`
		} `json:"storage"`
		Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
	} `json:"spec"`
}

// KafkaTopic is Strimzi's kafka.strimzi.io/v1 KafkaTopic.
type KafkaTopic struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		TopicName  string         `json:"topicName,omitempty"`
		Partitions int32          `json:"partitions"`
		Replicas   int32          `json:"replicas"`
		Config     map[string]any `json:"config,omitempty"`
	} `json:"spec"`
}

// KafkaUser is Strimzi's kafka.strimzi.io/v1 KafkaUser (SCRAM, simple authorization).
type KafkaUser struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Authentication struct {
			Type string `json:"type"`
		} `json:"authentication"`
		Authorization struct {
			Type string `json:"type"`
			ACLs []struct {
				Resource struct {
					Type        string `json:"type"`
					Name        string `json:"name,omitempty"`
					PatternType string `json:"patternType,omitempty"`
				} `json:"resource"`
				Operations []string `json:"operations"`
				Host       string   `json:"host,omitempty"`
			} `json:"acls"`
		} `json:"authorization"`
	} `json:"spec"`
}

// MongoDBCommunity is the MongoDB community operator's mongodbcommunity.mongodb.com/v1 resource.
type MongoDBCommunity struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Members  int32  `json:"members"`
		Type     string `json:"type"`
		Version  string `json:"version"`
		Security struct {
			Authentication struct {
				Modes []string `json:"modes"`
			} `json:"authentication"`
		} `json:"security"`
		Users []struct {
			Name              string `json:"name"`
			DB                string `json:"db"`
			PasswordSecretRef struct {
				Name string `json:"name"`
				Key  string `json:"key,omitempty"`
			} `json:"passwordSecretRef"`
			Roles []struct {
				Name string `json:"name"`
				DB   string `json:"db"`
			} `json:"roles"`
			ScramCredentialsSecretName string `json:"scramCredentialsSecretName"`
		} `json:"users"`
		AdditionalMongodConfig           map[string]any `json:"additionalMongodConfig,omitempty"`
		AdditionalConnectionStringConfig map[string]any `json:"additionalConnectionStringConfig,omitempty"`
		StatefulSet                      *struct {
			Spec map[string]any `json:"spec"`
		} `json:"statefulSet,omitempty"`
	} `json:"spec"`
}
