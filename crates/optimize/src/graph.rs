//! Graph bookkeeping shared by the rewrites: validation, producers and consumers, fresh names.

use std::collections::{HashMap, HashSet};

use crate::error::{OptimizeError, Result};
use crate::onnx::{attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto, TensorProto};

/// How a node is named in messages: its name, or its first output when it has none.
pub fn node_label(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        node.name.clone()
    } else if let Some(out) = node.output.first() {
        format!("<unnamed, output '{out}'>")
    } else {
        "<unnamed>".to_string()
    }
}

/// Checks what the rewrites rely on: every node has an op type and outputs, every input of a
/// node is defined before it (graph input, initializer or an earlier node's output), and no
/// tensor is produced twice. Errors name the node.
pub fn validate(graph: &GraphProto) -> Result<()> {
    let mut defined: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    defined.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    let produced_later: HashSet<&str> =
        graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str)).collect();
    for node in &graph.node {
        if node.op_type.is_empty() {
            return Err(OptimizeError::node(node, "the node has no op_type"));
        }
        if node.output.iter().all(String::is_empty) {
            return Err(OptimizeError::node(node, "the node has no outputs"));
        }
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            if !defined.contains(input.as_str()) {
                let why = if produced_later.contains(input.as_str()) {
                    "is produced by a later node (the graph is not in topological order)"
                } else {
                    "is not a graph input, an initializer or the output of any node"
                };
                return Err(OptimizeError::node(node, format!("input '{input}' {why}")));
            }
        }
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            if !defined.insert(output.as_str()) {
                return Err(OptimizeError::node(node, format!("output '{output}' is already defined")));
            }
        }
    }
    for output in &graph.output {
        if !defined.contains(output.name.as_str()) {
            return Err(OptimizeError::model(format!(
                "graph output '{}' is not produced by any node",
                output.name
            )));
        }
    }
    Ok(())
}

/// For each tensor, the indices of the nodes that read it.
pub fn consumers(graph: &GraphProto) -> HashMap<String, Vec<usize>> {
    let mut map: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for input in node.input.iter().filter(|s| !s.is_empty()) {
            let uses = map.entry(input.clone()).or_default();
            if uses.last() != Some(&i) {
                uses.push(i);
            }
        }
    }
    map
}

/// The initializers by name.
pub fn initializers(graph: &GraphProto) -> HashMap<String, &TensorProto> {
    graph.initializer.iter().map(|t| (t.name.clone(), t)).collect()
}

/// Makes names that no tensor or node of the graph uses yet.
pub struct NameGenerator {
    taken: HashSet<String>,
}

impl NameGenerator {
    pub fn new(graph: &GraphProto) -> Self {
        let mut taken: HashSet<String> = HashSet::new();
        taken.extend(graph.input.iter().map(|v| v.name.clone()));
        taken.extend(graph.output.iter().map(|v| v.name.clone()));
        taken.extend(graph.initializer.iter().map(|t| t.name.clone()));
        for node in &graph.node {
            taken.insert(node.name.clone());
            taken.extend(node.input.iter().cloned());
            taken.extend(node.output.iter().cloned());
        }
        NameGenerator { taken }
    }

    /// `base`, or `base_2`, `base_3`, ... when taken.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 2;
        while self.taken.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.taken.insert(name.clone());
        name
    }
}

/// A node in the default domain.
pub fn node(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op_type.to_string(),
        name: name.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..NodeProto::default()
    }
}

/// An INT attribute.
pub fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..AttributeProto::default()
    }
}

/// A node's attribute by name.
pub fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// A node's INT attribute, or `default` when absent.
pub fn int_attr(node: &NodeProto, name: &str, default: i64) -> i64 {
    attribute(node, name).map(|a| a.i).unwrap_or(default)
}

/// A node's FLOAT attribute, or `default` when absent.
pub fn float_attr(node: &NodeProto, name: &str, default: f32) -> f32 {
    attribute(node, name).map(|a| a.f).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{float_tensor, tensor_value_info};
    use crate::onnx::tensor_proto::DataType;

    fn graph(nodes: Vec<NodeProto>) -> GraphProto {
        GraphProto {
            node: nodes,
            input: vec![tensor_value_info("x", DataType::Float)],
            output: vec![tensor_value_info("y", DataType::Float)],
            initializer: vec![float_tensor("w", &[1], &[2.0])],
            ..GraphProto::default()
        }
    }

    #[test]
    fn accepts_a_well_formed_graph() {
        let g = graph(vec![node("Mul", "mul", &["x", "w"], &["t"]), node("Relu", "relu", &["t"], &["y"])]);
        validate(&g).expect("valid");
        assert_eq!(consumers(&g)["t"], vec![1]);
    }

    #[test]
    fn names_the_node_with_an_undefined_input() {
        let g = graph(vec![node("Mul", "mul", &["x", "missing"], &["y"])]);
        let err = validate(&g).expect_err("undefined input").to_string();
        assert!(err.contains("node 'mul' (Mul)") && err.contains("'missing'"), "{err}");
    }

    #[test]
    fn names_the_node_out_of_order() {
        let g = graph(vec![node("Relu", "relu", &["t"], &["y"]), node("Mul", "mul", &["x", "w"], &["t"])]);
        let err = validate(&g).expect_err("out of order").to_string();
        assert!(err.contains("'relu'") && err.contains("topological"), "{err}");
    }

    #[test]
    fn fresh_names_do_not_collide() {
        let g = graph(vec![node("Relu", "relu", &["x"], &["y"])]);
        let mut names = NameGenerator::new(&g);
        assert_eq!(names.fresh("y"), "y_2");
        assert_eq!(names.fresh("y"), "y_3");
        assert_eq!(names.fresh("z"), "z");
    }
}
