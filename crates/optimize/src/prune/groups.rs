//! Channel dependency groups, built from the graph as Torch-Pruning does: the output channels of
//! a Conv/Gemm form a *space*; BatchNorm, activations, pooling and depthwise convolutions carry
//! it forward; an Add joins the spaces of its two inputs into one group (a residual: both
//! branches must keep the same channels); a Concat lays spaces side by side. Every tensor whose
//! axis follows a group's channels is recorded as an [`Edit`], so that removing channel `c` of
//! the group removes it everywhere at once. A space that reaches something this analysis does
//! not follow (a graph output, Reshape, a grouped convolution...) is blocked: it is not pruned.

use std::collections::HashMap;

use crate::graph::{attribute, initializers, int_attr, node_label};
use crate::onnx::GraphProto;

/// A channel axis as the concatenation of spaces; `flattened`: each channel was spread over
/// several consecutive features by a Flatten (the count follows from the consumer's weight).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub spaces: Vec<usize>,
    pub flattened: bool,
}

/// What an edited tensor is to the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Weights or bias that compute the channels (their importance is measured here).
    Producer,
    /// Per-channel parameters carried along (BatchNorm, depthwise weights, per-channel constants).
    Carried,
    /// Weights that read the channels (the next layer's input channels).
    Consumer,
}

/// One initializer whose `axis` follows a layout of spaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    pub tensor: String,
    pub axis: usize,
    pub layout: Layout,
    pub role: Role,
}

/// The result of the analysis.
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    /// Size of each space.
    pub sizes: Vec<usize>,
    parent: Vec<usize>,
    blocked: Vec<Option<String>>,
    pub edits: Vec<Edit>,
    /// Depthwise Conv nodes (by index) whose `group` follows the channels of their input.
    pub depthwise: Vec<(usize, Layout)>,
}

/// A set of spaces that must keep the same channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub root: usize,
    pub size: usize,
    pub spaces: Vec<usize>,
    /// Why the group cannot be pruned, if it cannot.
    pub blocked: Option<String>,
}

impl Dependencies {
    fn new_space(&mut self, size: usize) -> usize {
        self.sizes.push(size);
        self.parent.push(self.sizes.len() - 1);
        self.blocked.push(None);
        self.sizes.len() - 1
    }

    /// The group (root space) of a space.
    pub fn root(&self, mut s: usize) -> usize {
        while self.parent[s] != s {
            s = self.parent[s];
        }
        s
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra != rb {
            self.parent[rb] = ra;
            if self.blocked[ra].is_none() {
                self.blocked[ra] = self.blocked[rb].take();
            }
        }
    }

    fn block(&mut self, layout: &Layout, why: &str) {
        for &s in &layout.spaces {
            let r = self.root(s);
            if self.blocked[r].is_none() {
                self.blocked[r] = Some(why.to_string());
            }
        }
    }

    /// The total channels of a layout.
    pub fn channels(&self, layout: &Layout) -> usize {
        layout.spaces.iter().map(|&s| self.sizes[s]).sum()
    }

    /// Every group, blocked ones with their reason.
    pub fn groups(&self) -> Vec<Group> {
        let mut by_root: HashMap<usize, Vec<usize>> = HashMap::new();
        for s in 0..self.sizes.len() {
            by_root.entry(self.root(s)).or_default().push(s);
        }
        let mut groups: Vec<Group> = by_root
            .into_iter()
            .map(|(root, spaces)| Group {
                root,
                size: self.sizes[root],
                spaces,
                blocked: self.blocked[root].clone(),
            })
            .collect();
        groups.sort_by_key(|g| g.root);
        groups
    }
}

fn is_depthwise(group: usize, in_channels: usize, out_channels: usize) -> bool {
    group > 1 && group == in_channels && out_channels == in_channels
}

/// Analyses a graph (in topological order, as `graph::validate` checks).
pub fn analyse(graph: &GraphProto) -> Dependencies {
    let inits = initializers(graph);
    let dims = |name: &str| inits.get(name).map(|t| t.dims.clone());
    let mut deps = Dependencies::default();
    let mut layouts: HashMap<String, Layout> = HashMap::new();
    for (index, node) in graph.node.iter().enumerate() {
        let label = format!("{} ({})", node_label(node), node.op_type);
        let input_layout = |i: usize| node.input.get(i).and_then(|n| layouts.get(n)).cloned();
        let out = node.output.first().cloned().unwrap_or_default();
        let mut produced: Option<Layout> = None;
        match node.op_type.as_str() {
            "Conv" => {
                let w = node.input.get(1).and_then(|n| dims(n).map(|d| (n.clone(), d)));
                let group = int_attr(node, "group", 1).max(1) as usize;
                match (w, input_layout(0)) {
                    (Some((w, wd)), input) if wd.len() == 4 => {
                        let (m, c_per_group) = (wd[0] as usize, wd[1] as usize);
                        let bias =
                            node.input.get(2).filter(|b| !b.is_empty() && inits.contains_key(b.as_str()));
                        let input_channels = c_per_group * group;
                        if let Some(input) =
                            input.clone().filter(|l| is_depthwise(group, deps.channels(l), m))
                        {
                            deps.edits.push(Edit {
                                tensor: w,
                                axis: 0,
                                layout: input.clone(),
                                role: Role::Carried,
                            });
                            if let Some(b) = bias {
                                deps.edits.push(Edit {
                                    tensor: b.clone(),
                                    axis: 0,
                                    layout: input.clone(),
                                    role: Role::Carried,
                                });
                            }
                            deps.depthwise.push((index, input.clone()));
                            produced = Some(input);
                        } else {
                            if let Some(input) = &input {
                                if group == 1 && deps.channels(input) == input_channels {
                                    deps.edits.push(Edit {
                                        tensor: w.clone(),
                                        axis: 1,
                                        layout: input.clone(),
                                        role: Role::Consumer,
                                    });
                                } else {
                                    deps.block(input, &format!("read by the grouped convolution {label}"));
                                }
                            }
                            let space = deps.new_space(m);
                            let layout = Layout { spaces: vec![space], flattened: false };
                            if group != 1 {
                                deps.block(&layout, &format!("made by the grouped convolution {label}"));
                            }
                            deps.edits.push(Edit {
                                tensor: w,
                                axis: 0,
                                layout: layout.clone(),
                                role: Role::Producer,
                            });
                            if let Some(b) = bias {
                                deps.edits.push(Edit {
                                    tensor: b.clone(),
                                    axis: 0,
                                    layout: layout.clone(),
                                    role: Role::Producer,
                                });
                            }
                            produced = Some(layout);
                        }
                    }
                    (_, input) => {
                        if let Some(input) = input {
                            deps.block(
                                &input,
                                &format!("read by {label}, whose weight is not an initializer"),
                            );
                        }
                    }
                }
            }
            "Gemm" | "MatMul" => {
                let trans_b = node.op_type == "Gemm" && int_attr(node, "transB", 0) != 0;
                let trans_a = node.op_type == "Gemm" && int_attr(node, "transA", 0) != 0;
                let w = node.input.get(1).and_then(|n| dims(n).map(|d| (n.clone(), d)));
                let input = input_layout(0);
                match w {
                    Some((w, wd)) if wd.len() == 2 && !trans_a => {
                        let (in_axis, out_axis) = if trans_b { (1, 0) } else { (0, 1) };
                        if let Some(input) = input {
                            let features = wd[in_axis] as usize;
                            let channels = deps.channels(&input);
                            let fits = if input.flattened {
                                channels > 0 && features.is_multiple_of(channels)
                            } else {
                                features == channels
                            };
                            if fits {
                                deps.edits.push(Edit {
                                    tensor: w.clone(),
                                    axis: in_axis,
                                    layout: input,
                                    role: Role::Consumer,
                                });
                            } else {
                                deps.block(
                                    &input,
                                    &format!("read by {label} with {features} input features"),
                                );
                            }
                        }
                        let space = deps.new_space(wd[out_axis] as usize);
                        let layout = Layout { spaces: vec![space], flattened: false };
                        deps.edits.push(Edit {
                            tensor: w,
                            axis: out_axis,
                            layout: layout.clone(),
                            role: Role::Producer,
                        });
                        if let Some(c) = node
                            .input
                            .get(2)
                            .filter(|c| dims(c).is_some_and(|d| d.len() == 1 && d[0] == wd[out_axis]))
                        {
                            deps.edits.push(Edit {
                                tensor: c.clone(),
                                axis: 0,
                                layout: layout.clone(),
                                role: Role::Producer,
                            });
                        } else if let Some(c) = node.input.get(2).filter(|c| !c.is_empty()) {
                            if dims(c).is_none_or(|d| element_count_of(&d) != 1) {
                                deps.block(&layout, &format!("{label} adds a bias of another shape"));
                            }
                        }
                        produced = Some(layout);
                    }
                    _ => {
                        for i in 0..node.input.len() {
                            if let Some(l) = input_layout(i) {
                                deps.block(&l, &format!("read by {label}"));
                            }
                        }
                    }
                }
            }
            "BatchNormalization" => {
                if let Some(input) = input_layout(0) {
                    for param in node.input.iter().skip(1).take(4) {
                        deps.edits.push(Edit {
                            tensor: param.clone(),
                            axis: 0,
                            layout: input.clone(),
                            role: Role::Carried,
                        });
                    }
                    produced = Some(input);
                }
            }
            "Relu" | "Clip" | "Sigmoid" | "HardSigmoid" | "HardSwish" | "LeakyRelu" | "Dropout"
            | "Identity" | "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => {
                produced = input_layout(0);
                if produced.as_ref().is_some_and(|l| l.flattened) && node.op_type.contains("Pool") {
                    if let Some(l) = &produced {
                        deps.block(l, &format!("pooled by {label} after a Flatten"));
                    }
                    produced = None;
                }
            }
            "Flatten" => {
                if let Some(input) = input_layout(0) {
                    if int_attr(node, "axis", 1) == 1 {
                        produced = Some(Layout { spaces: input.spaces, flattened: true });
                    } else {
                        deps.block(&input, &format!("flattened by {label} on another axis"));
                    }
                }
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (input_layout(0), input_layout(1));
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let same = a.flattened == b.flattened
                            && a.spaces.len() == b.spaces.len()
                            && a.spaces.iter().zip(&b.spaces).all(|(x, y)| deps.sizes[*x] == deps.sizes[*y]);
                        if same {
                            for (x, y) in a.spaces.iter().zip(&b.spaces) {
                                deps.union(*x, *y);
                            }
                            produced = Some(a);
                        } else {
                            deps.block(&a, &format!("combined by {label} with a different channel layout"));
                            deps.block(&b, &format!("combined by {label} with a different channel layout"));
                        }
                    }
                    (Some(l), None) | (None, Some(l)) => {
                        let other = if input_layout(0).is_some() { 1 } else { 0 };
                        let constant = node.input.get(other).and_then(|n| dims(n).map(|d| (n.clone(), d)));
                        let channels = deps.channels(&l) as i64;
                        let axis = |d: &[i64]| per_channel_axis(d, channels).filter(|_| !l.flattened);
                        match constant {
                            Some((_, d)) if element_count_of(&d) == 1 => produced = Some(l),
                            Some((name, d)) if axis(&d).is_some() => {
                                let axis = axis(&d).unwrap_or(0);
                                deps.edits.push(Edit {
                                    tensor: name,
                                    axis,
                                    layout: l.clone(),
                                    role: Role::Carried,
                                });
                                produced = Some(l);
                            }
                            _ => {
                                deps.block(&l, &format!("combined by {label} with a tensor of another shape"))
                            }
                        }
                    }
                    (None, None) => {}
                }
            }
            "Concat" => {
                let parts: Vec<Option<Layout>> = (0..node.input.len()).map(input_layout).collect();
                let on_channels =
                    int_attr(node, "axis", 0) == 1 || attribute(node, "axis").is_some_and(|a| a.i == -3);
                if on_channels && parts.iter().all(|p| p.as_ref().is_some_and(|l| !l.flattened)) {
                    let spaces = parts.into_iter().flatten().flat_map(|l| l.spaces).collect();
                    produced = Some(Layout { spaces, flattened: false });
                } else {
                    for l in parts.into_iter().flatten() {
                        deps.block(
                            &l,
                            &format!("concatenated by {label} on another axis or with unknown channels"),
                        );
                    }
                }
            }
            _ => {
                for i in 0..node.input.len() {
                    if let Some(l) = input_layout(i) {
                        deps.block(&l, &format!("read by {label}, which channel pruning does not follow"));
                    }
                }
            }
        }
        if let Some(layout) = produced {
            layouts.insert(out, layout);
        }
    }
    for output in &graph.output {
        if let Some(l) = layouts.get(&output.name).cloned() {
            deps.block(&l, &format!("it is the graph output '{}'", output.name));
        }
    }
    deps
}

fn element_count_of(dims: &[i64]) -> i64 {
    dims.iter().product()
}

/// The axis of a per-channel constant broadcast against NCHW (`[C,1,1]`, `[1,C,1,1]`) or
/// `[N,C]` (`[C]`) data.
fn per_channel_axis(dims: &[i64], channels: i64) -> Option<usize> {
    match dims {
        [c] if *c == channels => Some(0),
        [c, 1, 1] if *c == channels => Some(0),
        [1, c, 1, 1] if *c == channels => Some(1),
        _ => None,
    }
}
